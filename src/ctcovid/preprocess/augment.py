"""Training-time augmentation of preprocessed ``(C, D, H, W)`` float arrays.

Applied after the deterministic pipeline, during training only. Every random choice comes from
the ``numpy.random.Generator`` passed in, drawn in a fixed order, so a run is reproduced by its
seed. The transforms, in the order applied:

* flips along the configured axes (``"z"``, ``"y"``, ``"x"``), each with probability ``flip_p``.
  A left-right (``"x"``) flip gives a plausible chest (the lungs are nearly symmetric, the heart
  moves to the other side), so it is the default; ``"y"`` (upside-down) is not anatomical;
* one in-plane rotation (uniform in +-``rotate_deg``) and scaling (uniform in
  ``1 +- scale``) about the image centre, shared by all slices and channels, bilinear, with the
  border value carried outwards (at the edge of a body crop that is air);
* intensity jitter ``x * a + b`` with ``a`` in ``1 +- intensity_scale`` and ``b`` in
  ``+- intensity_shift`` (in the [0, 1] units of the windowed array);
* additive Gaussian noise of standard deviation ``noise_std``.

Values are not clipped back to [0, 1]: jitter and noise are meant to move them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctcovid.errors import ConfigError

FLIP_AXES: tuple[str, ...] = ("z", "y", "x")
_ARRAY_AXIS = {"z": 1, "y": 2, "x": 3}  # in (C, D, H, W)

AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; zero disables a transform (``flip_axes=()`` disables flips)."""

    flip_axes: tuple[str, ...] = ("x",)
    flip_p: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_std: float = 0.01

    def __post_init__(self) -> None:
        axes = tuple(self.flip_axes)
        bad = [a for a in axes if a not in FLIP_AXES]
        if bad or len(set(axes)) != len(axes):
            raise ConfigError(
                f"augment.flip_axes={list(axes)!r} is invalid; use distinct names from {list(FLIP_AXES)}"
            )
        object.__setattr__(self, "flip_axes", axes)
        _check_range("augment.flip_p", self.flip_p, 0.0, 1.0)
        _check_range("augment.rotate_deg", self.rotate_deg, 0.0, 180.0)
        _check_range("augment.scale", self.scale, 0.0, 0.9)
        _check_range("augment.intensity_scale", self.intensity_scale, 0.0, 0.9)
        _check_range("augment.intensity_shift", self.intensity_shift, 0.0, 1.0)
        _check_range("augment.noise_std", self.noise_std, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, floats) for TOML/JSON and checkpoints."""
        d = dataclasses.asdict(self)
        d["flip_axes"] = list(self.flip_axes)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown augment key(s) {unknown}; valid: {', '.join(sorted(names))}")
        kwargs = dict(data)
        if "flip_axes" in kwargs:
            kwargs["flip_axes"] = tuple(kwargs["flip_axes"])
        return cls(**kwargs)


def _check_range(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is invalid; expected a number in [{low:g}, {high:g}]")


def rotate_scale_inplane(array: np.ndarray, angle_deg: float, scale: float) -> np.ndarray:
    """Rotate by ``angle_deg`` and zoom by ``scale`` (>1 enlarges) every ``(H, W)`` plane of ``array``.

    About the image centre, in physical (pixel) proportions even for non-square planes; bilinear,
    pixel-centre convention, border values carried outwards.
    """
    h, w = array.shape[-2:]
    theta = math.radians(angle_deg)
    c, s = math.cos(theta) / scale, math.sin(theta) / scale
    # affine_grid works in normalised [-1, 1] coordinates per axis; the h/w factors make the
    # rotation a rotation of pixels, not of the normalised square.
    affine = torch.tensor([[[c, -s * h / w, 0.0], [s * w / h, c, 0.0]]], dtype=torch.float32)
    planes = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(1, -1, h, w))
    grid = F.affine_grid(affine, list(planes.shape), align_corners=False)
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.numpy().reshape(array.shape)


@dataclass(frozen=True)
class Augment:
    """The augmentation of one :class:`AugmentConfig`: ``augment(array, rng) -> new array``."""

    config: AugmentConfig

    def __call__(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if array.ndim != 4:
            raise ValueError(f"augmentation expects (C, D, H, W), got shape {array.shape}")
        cfg = self.config
        out = array
        for axis in cfg.flip_axes:
            if rng.random() < cfg.flip_p:
                out = np.flip(out, axis=_ARRAY_AXIS[axis])
        angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg) if cfg.rotate_deg > 0 else 0.0
        zoom = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale) if cfg.scale > 0 else 1.0
        if angle != 0.0 or zoom != 1.0:
            out = rotate_scale_inplane(out, angle, zoom)
        out = np.array(out, dtype=np.float32, copy=True)  # never modify the caller's array
        if cfg.intensity_scale > 0 or cfg.intensity_shift > 0:
            out *= np.float32(rng.uniform(1.0 - cfg.intensity_scale, 1.0 + cfg.intensity_scale))
            out += np.float32(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift))
        if cfg.noise_std > 0:
            out += np.float32(cfg.noise_std) * rng.standard_normal(out.shape, dtype=np.float32)
        return out


def build_augment(config: AugmentConfig) -> Augment:
    """The training augmentation described by ``config`` (a callable ``(array, rng) -> array``)."""
    return Augment(config)
