"""The preprocessing pipeline: one config, one callable, shared by training, evaluation,
prediction and serving (the config travels in every checkpoint; see :meth:`PreprocessConfig.to_dict`).

``build_pipeline(cfg)(volume)`` turns a :class:`~ctcovid.types.Volume` into a float32
``(C, D, H, W)`` array in [0, 1]. The steps, in the order that is cheapest for the same result:

1. find the body on a coarse grid and its crop box (:mod:`.body`), widened to the output's
   aspect ratio when ``fit="pad"`` (:mod:`.spatial`);
2. crop the rows (a view: no copy) and, for ``depth_mode="uniformize"``, resample z to
   ``depth`` slices with one matrix product (:mod:`.depth`), so later steps see 40 slices, not 300;
3. crop or pad the columns and rows to the box (padding is air);
4. resize in-plane to ``size_hw`` (pixel-centre convention);
5. set voxels outside the body mask to air (the mask sampled at the output grid), which removes a
   table that lies inside the crop box;
6. window to channels (:mod:`.intensity`). Windowing last clips any spline overshoot, so the output
   stays in [0, 1]. The windowed values go through their compact stored form
   (:class:`~ctcovid.preprocess.intensity.Encoding`: uint8 for 8-bit display sources, uint16 per
   distinct HU window), which is what the cache keeps, so a cached scan decodes to exactly what
   the pipeline returns.

``depth_mode="stack"`` keeps every slice and :meth:`Pipeline.chunks` cuts the result into
chunks of ``chunk_depth`` slices (CC-CCII 3D ResNet, depth-n); ``"keep"`` keeps every slice as
one sample. Augmentation (training only) is separate: ``build_augment(cfg.augment)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ctcovid.errors import ConfigError
from ctcovid.preprocess.augment import AugmentConfig
from ctcovid.preprocess.body import BODY_THRESHOLD_DISPLAY, BODY_THRESHOLD_HU, BodyMask, find_body
from ctcovid.preprocess.depth import (
    LAST_POLICIES,
    SHORT_POLICIES,
    SPLINE_ORDERS,
    Chunk,
    LastPolicy,
    ShortPolicy,
    source_slices,
    stack_chunks,
    uniformize_depth,
    uniformized_spacing_z,
)
from ctcovid.preprocess.intensity import LUNG_WINDOW_HU, Encoding, air_value, encode_channels
from ctcovid.preprocess.spatial import (
    INPLANE_MODES,
    CropBox,
    InplaneMode,
    crop_or_pad,
    fit_box_to_aspect,
    resize_inplane,
    source_coordinates,
)
from ctcovid.types import Units, Volume

DepthMode = Literal["uniformize", "stack", "keep"]
FitMode = Literal["pad", "stretch"]
DEPTH_MODES: tuple[str, ...] = ("uniformize", "stack", "keep")
FIT_MODES: tuple[str, ...] = ("pad", "stretch")


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that defines the model's input. Defaults: COVID-Net CT-S (severity).

    For the CC-CCII 3D ResNet (diagnosis) use ``depth_mode="stack"``, ``chunk_depth=4`` (the
    paper's best depth) and ``in_channels=3``; its text gives the slice size as 512x152x3, which we
    read as a typo for 512x512x3 (``size_hw=(512, 512)``); any size can be configured.
    """

    windows_hu: tuple[tuple[float, float], ...] = (LUNG_WINDOW_HU,)  # (level_hu, width_hu) per channel
    in_channels: int = 1
    size_hw: tuple[int, int] = (256, 256)
    fit: FitMode = "pad"  # "pad": keep proportions, pad with air; "stretch": fill H x W
    inplane_mode: InplaneMode = "linear"
    body_crop: bool = True
    body_threshold_hu: float = BODY_THRESHOLD_HU
    body_threshold_display: float = BODY_THRESHOLD_DISPLAY
    body_margin_mm: float = 10.0
    mask_outside_body: bool = True
    crop_z: bool = False
    depth_mode: DepthMode = "uniformize"
    depth: int = 40  # slices after uniformization
    depth_order: int = 3  # spline order of uniformization: 0, 1 or 3
    chunk_depth: int = 4  # slices per chunk in "stack" mode
    chunk_stride: int | None = None  # None: chunk_depth (no overlap)
    chunk_last: LastPolicy = "shift"
    chunk_short: ShortPolicy = "pad"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        try:
            windows = tuple((float(level), float(width)) for level, width in self.windows_hu)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"windows_hu={self.windows_hu!r} is invalid; expected a list of (level_hu, width_hu) pairs, "
                "e.g. [[-600, 1500], [40, 400]]"
            ) from e
        if not windows or any(width <= 0 for _, width in windows):
            raise ConfigError(
                f"windows_hu={self.windows_hu!r} needs at least one window, each with width_hu > 0"
            )
        object.__setattr__(self, "windows_hu", windows)
        _check_int("in_channels", self.in_channels, 1)
        if self.in_channels != len(windows) and len(windows) != 1:
            raise ConfigError(
                f"in_channels={self.in_channels} does not match the {len(windows)} windows in windows_hu; "
                "give one window per channel, or a single window to replicate"
            )
        try:
            h, w = self.size_hw
        except (TypeError, ValueError) as e:
            raise ConfigError(f"size_hw={self.size_hw!r} is invalid; expected [height, width]") from e
        _check_int("size_hw[0]", h, 1)
        _check_int("size_hw[1]", w, 1)
        object.__setattr__(self, "size_hw", (h, w))
        _check_choice("fit", self.fit, FIT_MODES)
        _check_choice("inplane_mode", self.inplane_mode, INPLANE_MODES)
        _check_choice("depth_mode", self.depth_mode, DEPTH_MODES)
        _check_choice("depth_order", self.depth_order, SPLINE_ORDERS)
        _check_choice("chunk_last", self.chunk_last, LAST_POLICIES)
        _check_choice("chunk_short", self.chunk_short, SHORT_POLICIES)
        _check_int("depth", self.depth, 1)
        _check_int("chunk_depth", self.chunk_depth, 1)
        if self.chunk_stride is not None:
            _check_int("chunk_stride", self.chunk_stride, 1)
        if (
            isinstance(self.body_margin_mm, bool)
            or not isinstance(self.body_margin_mm, int | float)
            or self.body_margin_mm < 0
        ):
            raise ConfigError(
                f"body_margin_mm={self.body_margin_mm!r} is invalid; expected a number >= 0 (mm)"
            )
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(
                f"augment={self.augment!r} is invalid; expected an AugmentConfig or a table of its keys"
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, numbers, strings, nested dict) that :meth:`from_dict` restores."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["windows_hu"] = [list(w) for w in self.windows_hu]
        d["size_hw"] = list(self.size_hw)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build from a plain dict (a checkpoint, a TOML table); unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown preprocess key(s) {unknown}; valid: {', '.join(sorted(names))}")
        kwargs = dict(data)
        if "windows_hu" in kwargs:
            kwargs["windows_hu"] = tuple(tuple(w) for w in kwargs["windows_hu"])
        if "size_hw" in kwargs:
            kwargs["size_hw"] = tuple(kwargs["size_hw"])
        if isinstance(kwargs.get("augment"), Mapping):
            kwargs["augment"] = AugmentConfig.from_dict(kwargs["augment"])
        return cls(**kwargs)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid; expected an integer >= {minimum}")


def _check_choice(name: str, value: object, options: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in options:
        raise ConfigError(f"{name}={value!r} is invalid; valid: {', '.join(str(o) for o in options)}")


@dataclass(frozen=True)
class Preprocessed:
    """A preprocessed scan and where it came from.

    ``planes`` is the compact stored form (see :class:`~ctcovid.preprocess.intensity.Encoding`);
    :attr:`array`, the float32 ``(C, D, H, W)`` model input, is decoded from it on first use (the
    cache stores ``planes`` and never needs it). ``box`` is the crop in the input's voxel indices
    (it may reach outside the image where it was padded). ``spacing_mm`` (z, y, x) and
    ``origin_mm`` (LPS, centre of output voxel 0) give the output's geometry, for overlays such as
    Grad-CAM.
    """

    planes: np.ndarray
    encoding: Encoding
    box: CropBox
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    body_found: bool
    warnings: tuple[str, ...] = ()

    @functools.cached_property
    def array(self) -> np.ndarray:
        return self.encoding.decode(self.planes)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(C, D, H, W)`` of :attr:`array`, without decoding it."""
        d, h, w = self.planes.shape[1:]
        return (len(self.encoding.channels), int(d), int(h), int(w))


class Pipeline:
    """The deterministic preprocessing of one :class:`PreprocessConfig` (see the module docstring)."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"Pipeline({self.config!r})"

    def __call__(self, volume: Volume) -> np.ndarray:
        """The model-ready float32 ``(C, D, H, W)`` array of ``volume``."""
        return self.process(volume).array

    def process(self, volume: Volume) -> Preprocessed:
        """Like calling the pipeline, but also returns the crop box, geometry and warnings."""
        cfg = self.config
        voxels, units = volume.voxels, volume.units
        air = np.float32(air_value(units))
        warnings: list[str] = []
        body: BodyMask | None = None
        box = CropBox.full(volume.shape)
        if cfg.body_crop:
            threshold = cfg.body_threshold_hu if units == Units.HU else cfg.body_threshold_display
            body = find_body(
                voxels,
                volume.spacing_mm,
                units=units,
                threshold=threshold,
                margin_mm=cfg.body_margin_mm,
                crop_z=cfg.crop_z,
            )
            box = body.box
            if body.warning:
                warnings.append(body.warning)
        if cfg.fit == "pad":
            box = fit_box_to_aspect(box, cfg.size_hw[0] / cfg.size_hw[1])

        masking = cfg.mask_outside_body and body is not None and body.found
        # Only voxels inside the image, and with masking only those inside the body's box, can
        # survive; the rest of the crop box is air. Reading less makes the "pad" fit as cheap as
        # "stretch". (The margin keeps the mask's dilated edge inside the body box.)
        keep = body.box if masking and body is not None else box
        row0, row1 = max(box.y0, keep.y0, 0), min(box.y1, keep.y1, volume.shape[1])
        col0, col1 = max(box.x0, keep.x0, 0), min(box.x1, keep.x1, volume.shape[2])
        # Rows first, as a view: a row-cropped contiguous volume is still one strided matrix
        # for the z-resampling product below. Columns are cut afterwards, on fewer slices.
        part = voxels[box.z0 : box.z1, row0:row1, :]
        n_z = box.z1 - box.z0
        if cfg.depth_mode == "uniformize":
            part = uniformize_depth(part, cfg.depth, cfg.depth_order)
            z_pos = box.z0 + source_slices(n_z, cfg.depth)
            spacing_z = uniformized_spacing_z(volume.spacing_mm[0], n_z, cfg.depth)
        else:
            z_pos = box.z0 + np.arange(n_z, dtype=np.float64)
            spacing_z = volume.spacing_mm[0]
        part = crop_or_pad(
            part[:, :, col0:col1],
            (box.y0 - row0, box.y1 - row0),
            (box.x0 - col0, box.x1 - col0),
            fill=float(air),
        )

        size_h, size_w = cfg.size_hw
        box_h, box_w = box.y1 - box.y0, box.x1 - box.x0
        out = resize_inplane(part, cfg.size_hw, cfg.inplane_mode)  # a new array: safe to write
        y_pos = box.y0 + source_coordinates(box_h, size_h)
        x_pos = box.x0 + source_coordinates(box_w, size_w)
        if masking and body is not None:
            out[~body.sample(z_pos, y_pos, x_pos)] = air

        bad = ~np.isfinite(out)
        if bad.any():  # a corrupt file; integer storage cannot hold NaN, and air is the safe value
            warnings.append(
                f"{int(bad.sum())} voxels of the preprocessed scan were not finite (NaN/inf in the file); set to air"
            )
            out[bad] = air
        del bad
        planes, encoding = encode_channels(out, units, cfg.windows_hu, cfg.in_channels)
        del out
        spacing = (spacing_z, volume.spacing_mm[1] * box_h / size_h, volume.spacing_mm[2] * box_w / size_w)
        x_mm, y_mm, z_mm = (float(c) for c in volume.index_to_lps((z_pos[0], y_pos[0], x_pos[0])))
        return Preprocessed(
            planes=planes,
            encoding=encoding,
            box=box,
            spacing_mm=spacing,
            origin_mm=(x_mm, y_mm, z_mm),
            body_found=body.found if body is not None else True,
            warnings=tuple(warnings),
        )

    def chunks(self, array: np.ndarray, scan_id: str) -> list[Chunk]:
        """The samples the network sees for one preprocessed scan.

        In ``"stack"`` mode, chunks of ``chunk_depth`` consecutive slices (policies
        ``chunk_last`` / ``chunk_short``, see :func:`~ctcovid.preprocess.depth.chunk_ranges`);
        otherwise one chunk holding the whole array, so callers can treat every mode alike.
        """
        cfg = self.config
        if cfg.depth_mode != "stack":
            return [Chunk(scan_id=scan_id, index=0, start=0, stop=int(array.shape[1]), array=array)]
        return stack_chunks(
            array, scan_id, cfg.chunk_depth, cfg.chunk_stride, cfg.chunk_last, cfg.chunk_short
        )


def build_pipeline(config: PreprocessConfig | None = None) -> Pipeline:
    """The pipeline of ``config`` (default: :class:`PreprocessConfig` defaults)."""
    return Pipeline(config if config is not None else PreprocessConfig())
