"""Body crop with patient-table removal, in 3D.

The body is what is denser than a threshold (default -500 HU: tissue and bone, not air, lung or
the table's foam mattress), cleaned up in four steps on a coarse grid (about 3 mm voxels, taken
by striding the volume, so a 300x512x512 scan costs a few tens of milliseconds):

1. an in-plane morphological opening (4-neighbour cross, one coarse voxel) cuts thin bridges (a
   cable, a blanket fold, a thin table shell touching the back) and removes structures thinner
   than about three coarse voxels;
2. the largest 3D connected component is kept: the table, separated from the body by the air
   or foam it lies on, is a different component and drops out (so do arms lying apart from the
   trunk, and any clutter);
3. holes are filled slice by slice (the lungs, which are below the threshold, become body);
4. the mask is dilated by one coarse voxel so that sampling it at full resolution never cuts
   the skin (a table closer than that to the body can survive as a sliver).

The crop box is the mask's bounding box in y and x (z is kept whole by default), widened by a
generous margin (default 10 mm): COVID-Net CT-S changed COVID-Net CT-2's crop to keep more of the
body, and a few millimetres of air around it cost nothing. Inside the box, voxels outside the
mask can be set to air so that a table within the margin vanishes too.

Slice images (``Units.DISPLAY``, 0..255) use a display threshold instead (default 100): above air
in a lung-windowed image (-1000 HU shows as about 60), below soft tissue in lung (~236) and
mediastinal (~127) windows. When nothing body-like is found the full field is kept, a warning is
logged and returned: preprocessing degrades, it does not fail.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from ctcovid.preprocess.intensity import air_value
from ctcovid.preprocess.spatial import CropBox
from ctcovid.types import Units, Volume

logger = logging.getLogger(__name__)

BODY_THRESHOLD_HU = -500.0
BODY_THRESHOLD_DISPLAY = 100.0
DEFAULT_MARGIN_MM = 10.0
COARSE_MM = 3.0
# A "body" smaller than this fraction of the field is noise or a phantom's clutter, not a patient.
MIN_BODY_FRACTION = 0.005

# In-plane structuring elements: z spacing varies between scanners, so no step mixes slices.
_CROSS_2D = np.zeros((3, 3, 3), dtype=bool)
_CROSS_2D[1] = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class BodyMask:
    """A body mask on a coarse grid plus the crop box it implies, in full-resolution indices.

    ``mask[i, j, k]`` stands for full-resolution voxel ``(i, j, k) * stride``; use
    :meth:`sample` to read it at full-resolution positions.
    """

    mask: np.ndarray
    stride: tuple[int, int, int]
    full_shape: tuple[int, int, int]
    body_box: CropBox  # tight bounds of the body (conservative), no margin
    box: CropBox  # body_box plus the margin, clamped to the image
    found: bool
    warning: str | None = None

    def sample(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The mask on the grid ``z x y x x`` of full-resolution positions (floats allowed).

        Takes three 1D arrays and returns a bool ``(len(z), len(y), len(x))`` array; positions
        outside the image are outside the body.
        """
        axes = []
        for pos, s, n_full, n_coarse in zip(
            (z, y, x), self.stride, self.full_shape, self.mask.shape, strict=True
        ):
            pos = np.asarray(pos, dtype=np.float64)
            inside = (pos > -0.5) & (pos < n_full - 0.5)
            idx = np.clip(np.rint(pos / s).astype(np.intp), 0, n_coarse - 1)
            axes.append((idx, inside))
        (iz, vz), (iy, vy), (ix, vx) = axes
        # Three successive 1D gathers: about 5x faster than one np.ix_ fancy index.
        out = self.mask.take(iz, axis=0).take(iy, axis=1).take(ix, axis=2)
        if not (vz.all() and vy.all() and vx.all()):
            out &= vz[:, None, None] & vy[None, :, None] & vx[None, None, :]
        return out


@dataclass(frozen=True)
class BodyCrop:
    """Result of :func:`crop_body`: the cropped volume (origin updated) and how it was made."""

    volume: Volume
    box: CropBox
    body: BodyMask

    @property
    def found(self) -> bool:
        return self.body.found

    @property
    def warning(self) -> str | None:
        return self.body.warning


def default_threshold(units: Units) -> float:
    """The body threshold for ``units``: -500 HU, or 100 for 8-bit display values."""
    return BODY_THRESHOLD_HU if units == Units.HU else BODY_THRESHOLD_DISPLAY


def coarse_strides(
    spacing_mm: tuple[float, float, float], coarse_mm: float = COARSE_MM
) -> tuple[int, int, int]:
    """Per-axis strides giving voxels of about ``coarse_mm`` (at least 1)."""
    sz, sy, sx = (max(1, int(coarse_mm / s + 1e-6)) for s in spacing_mm)
    return sz, sy, sx


def find_body(
    voxels: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    units: Units = Units.HU,
    threshold: float | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    crop_z: bool = False,
    coarse_mm: float = COARSE_MM,
) -> BodyMask:
    """Find the patient's body in ``(D, H, W)`` voxels and the crop box around it.

    ``threshold`` defaults to :func:`default_threshold` of ``units``. ``margin_mm`` widens the box
    on every cropped side. With ``crop_z`` the box is also cut along z (off by default: the
    scan's extent along z is the protocol's choice, and depth handling comes later).
    """
    if voxels.ndim != 3:
        raise ValueError(f"find_body expects (D, H, W) voxels, got shape {voxels.shape}")
    d, h, w = (int(n) for n in voxels.shape)
    full_shape = (d, h, w)
    thr = default_threshold(units) if threshold is None else float(threshold)
    stride = coarse_strides(spacing_mm, coarse_mm)
    sz, sy, sx = stride
    # Thresholding the strided view reads only 1/(sz*sy*sx) of the volume.
    dense = voxels[::sz, ::sy, ::sx] > thr
    opened = _dilate_inplane(_erode_inplane(dense))
    labels, n = ndi.label(opened)
    if n == 0:
        return _not_found(full_shape, stride, dense.shape, f"no voxel above {thr:g} after opening")
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    largest = int(counts.argmax())
    if counts[largest] < MIN_BODY_FRACTION * labels.size:
        return _not_found(
            full_shape,
            stride,
            dense.shape,
            f"largest structure above {thr:g} is {counts[largest] / labels.size:.2%} of the field",
        )
    body = labels == largest
    body = _fill_holes_per_slice(body)
    body_box = _coarse_bounds(body, stride, full_shape, crop_z)
    mask = _dilate_inplane(body)
    margins = [
        0 if (axis == 0 and not crop_z) else math.ceil(margin_mm / spacing_mm[axis]) for axis in range(3)
    ]
    box = CropBox(
        max(0, body_box.z0 - margins[0]),
        min(full_shape[0], body_box.z1 + margins[0]),
        max(0, body_box.y0 - margins[1]),
        min(full_shape[1], body_box.y1 + margins[1]),
        max(0, body_box.x0 - margins[2]),
        min(full_shape[2], body_box.x1 + margins[2]),
    )
    return BodyMask(mask, stride, full_shape, body_box, box, True)


def crop_body(
    volume: Volume,
    *,
    threshold: float | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    crop_z: bool = False,
    mask_outside: bool = True,
) -> BodyCrop:
    """Crop a volume to the patient's body (table removed); see the module docstring.

    Returns a :class:`BodyCrop` whose volume has ``origin_mm`` moved to the crop's first voxel
    and the same spacing and direction. With ``mask_outside`` voxels outside the body mask are
    set to air (-1000 HU, or 0 for display units). When no body is found the volume comes back
    whole and unmasked, with ``found=False`` and a warning.
    """
    body = find_body(
        volume.voxels,
        volume.spacing_mm,
        units=volume.units,
        threshold=threshold,
        margin_mm=margin_mm,
        crop_z=crop_z,
    )
    box = body.box
    voxels = volume.voxels[box.z0 : box.z1, box.y0 : box.y1, box.x0 : box.x1]
    if mask_outside and body.found:
        inside = body.sample(np.arange(box.z0, box.z1), np.arange(box.y0, box.y1), np.arange(box.x0, box.x1))
        voxels = np.where(inside, voxels, np.float32(air_value(volume.units)))
    else:
        voxels = voxels.copy()
    x_mm, y_mm, z_mm = (float(c) for c in volume.index_to_lps(box.start))
    origin = (x_mm, y_mm, z_mm)
    cropped = dataclasses.replace(volume, voxels=voxels, origin_mm=origin)
    return BodyCrop(volume=cropped, box=box, body=body)


def _erode_inplane(mask: np.ndarray) -> np.ndarray:
    # Erosion by the in-plane 4-neighbour cross (outside the image counts as background), with
    # array shifts: several times faster than scipy's generic binary morphology on this grid.
    out = mask.copy()
    out[:, 1:, :] &= mask[:, :-1, :]
    out[:, :-1, :] &= mask[:, 1:, :]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[:, 0, :] = out[:, -1, :] = False
    out[:, :, 0] = out[:, :, -1] = False
    return out


def _dilate_inplane(mask: np.ndarray) -> np.ndarray:
    # Dilation by the same cross.
    out = mask.copy()
    out[:, 1:, :] |= mask[:, :-1, :]
    out[:, :-1, :] |= mask[:, 1:, :]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    # Label the background of every slice at once (in-plane connectivity only); background
    # pieces that touch the slice border are outside, all others are holes (lungs, airways).
    background, _ = ndi.label(~mask, structure=_CROSS_2D)
    border = np.concatenate(
        [
            background[:, 0, :].ravel(),
            background[:, -1, :].ravel(),
            background[:, :, 0].ravel(),
            background[:, :, -1].ravel(),
        ]
    )
    keep = np.ones(int(background.max()) + 1, dtype=bool)
    keep[np.unique(border)] = False
    keep[0] = True  # label 0 is the body itself
    return keep[background]


def _coarse_bounds(
    mask: np.ndarray, stride: tuple[int, int, int], full_shape: tuple[int, int, int], crop_z: bool
) -> CropBox:
    bounds = []
    for axis in range(3):
        if axis == 0 and not crop_z:
            bounds.append((0, full_shape[0]))
            continue
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        s = stride[axis]
        # Coarse voxel i was sampled at i*s; the body may reach up to s-1 voxels further towards
        # the unsampled neighbours, so the bounds are widened by that much (never cut).
        lo = max(0, (int(present[0]) - 1) * s + 1)
        hi = min(full_shape[axis], (int(present[-1]) + 1) * s)
        bounds.append((lo, hi))
    (z0, z1), (y0, y1), (x0, x1) = bounds
    return CropBox(z0, z1, y0, y1, x0, x1)


def _not_found(
    full_shape: tuple[int, int, int], stride: tuple[int, int, int], coarse_shape: tuple[int, ...], why: str
) -> BodyMask:
    warning = f"no body found ({why}); kept the full field of view without cropping or masking"
    logger.warning(warning)
    full = CropBox.full(full_shape)
    return BodyMask(np.ones(coarse_shape, dtype=bool), stride, full_shape, full, full, False, warning)
