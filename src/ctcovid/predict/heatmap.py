"""A heatmap on the scan a clinician opened: where it may lie, how it maps back, how it is drawn.

* :func:`find_regions` / :func:`restriction_mask`: the lung field (aerated lung united with its
  left-right mirror, so a lobe consolidated on one side stays inside) or the body, on the input
  scan's grid, found once per scan;
* :func:`clear_lungs`: the preprocessed scan with its lung field made clear lung: the reference
  integrated gradients start from (see :mod:`ctcovid.predict.explain`);
* :func:`to_input_grid`: a map on the preprocessed grid brought back to the input's voxels by
  inverting the preprocessing geometry (crop box, in-plane resize, z uniformization);
* :func:`montage_png`: the most activated axial slices with the heatmap over the CT.

Used by :mod:`ctcovid.predict.explain`; none of it needs a model.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctcovid.preprocess.body import BodyMask, find_body
from ctcovid.preprocess.intensity import LUNG_WINDOW_HU, apply_window, display_to_unit, to_channels
from ctcovid.preprocess.pipeline import PreprocessConfig, Preprocessed
from ctcovid.types import Units, Volume

#: Aerated lung and ground glass lie below this, soft tissue and consolidation above.
LUNG_THRESHOLD_HU = -300.0
#: Aerated parts smaller than this fraction of the largest are not lung (stomach or bowel gas).
MIN_LUNG_PART = 0.1

# In-plane 4-neighbour cross on the coarse body grid (z spacing varies: no step mixes slices).
_CROSS_2D = np.zeros((3, 3, 3), dtype=bool)
_CROSS_2D[1] = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------- restriction
@dataclass(frozen=True)
class Regions:
    """Where a lesion can lie on one scan, found once (:func:`find_regions`): the body and the lung
    field as found, both on the body's coarse grid (~3 mm voxels)."""

    body: BodyMask
    lungs: np.ndarray | None  # :func:`lung_field`; None: no lung field (or no body) found

    def mask(self, restrict: str) -> np.ndarray | None:
        """Where heat may stay on the scan's grid for ``restrict`` ("lungs" or "body"); None: anywhere.

        The lung field is widened by one coarse voxel (a heatmap drawn at a few mm per voxel must
        not lose a lesion's edge on the pleura) and kept inside the body; it falls back to the
        body when no lung field was found, the body to None.
        """
        if not self.body.found:
            return None
        body = self.body
        if restrict == "lungs" and self.lungs is not None:
            body = dataclasses.replace(
                body, mask=ndimage.binary_dilation(self.lungs, structure=_CROSS_2D) & body.mask
            )
        d, h, w = body.full_shape
        return body.sample(np.arange(d), np.arange(h), np.arange(w))


def find_regions(volume: Volume, config: PreprocessConfig) -> Regions:
    """The body (``config``'s threshold, no margin) and the lung field of ``volume``."""
    threshold = config.body_threshold_hu if volume.units == Units.HU else config.body_threshold_display
    body = find_body(volume.voxels, volume.spacing_mm, units=volume.units, threshold=threshold, margin_mm=0.0)
    return Regions(body, lung_field(volume, body) if body.found else None)


def restriction_mask(volume: Volume, config: PreprocessConfig, restrict: str) -> np.ndarray | None:
    """``find_regions(volume, config).mask(restrict)``: where heat may stay; None: anywhere."""
    return find_regions(volume, config).mask(restrict)


def lung_threshold(units: Units) -> float:
    """:data:`LUNG_THRESHOLD_HU` in ``units`` (slice images: in the lung window they were most likely written in)."""
    if units == Units.HU:
        return LUNG_THRESHOLD_HU
    level, width = LUNG_WINDOW_HU
    return float(np.clip((LUNG_THRESHOLD_HU - level + width / 2) / width, 0, 1)) * 255.0


def lung_field(volume: Volume, body: BodyMask) -> np.ndarray | None:
    """The lung field on ``body``'s coarse grid (~3 mm voxels), dense lesions included; None if none.

    Aerated lung is what lies below :data:`LUNG_THRESHOLD_HU` inside the body, two coarse voxels
    away from the skin (the body mask's edge holds air), in connected parts of at least
    :data:`MIN_LUNG_PART` of the largest one (gas in the stomach and bowel under the diaphragm is a
    separate, smaller part). A lobe filled by consolidation is as dense as the heart, so no
    threshold finds it; the field is therefore the aerated lung united with its mirror image across
    the body's left-right centre (a unilateral lesion is covered by the other side's outline;
    bilateral ground glass is aerated enough to pass the threshold), kept inside the body. The
    mirror also covers part of the heart. Less than 2 % of the body (no lungs in the field of view,
    both lungs consolidated) gives None.
    """
    sz, sy, sx = body.stride
    coarse = volume.voxels[::sz, ::sy, ::sx]
    threshold = lung_threshold(volume.units)
    core = ndimage.binary_erosion(body.mask, structure=_CROSS_2D, iterations=2)
    aerated = _drop_small_parts(core & (coarse < threshold), MIN_LUNG_PART)
    # The left-right array axis: the one whose direction has the largest LPS x component.
    axis = int(np.argmax(np.abs(np.asarray(volume.direction)[0])))
    others = tuple(a for a in range(3) if a != axis)
    extent = np.flatnonzero(body.mask.any(axis=others))
    if extent.size == 0:
        return None
    n = aerated.shape[axis]
    mirror = np.clip(np.rint(extent[0] + extent[-1] - np.arange(n)).astype(np.intp), 0, n - 1)
    field = (aerated | np.take(aerated, mirror, axis=axis)) & body.mask
    if field.sum() < 0.02 * body.mask.sum():
        return None
    return field


def _drop_small_parts(mask: np.ndarray, fraction: float) -> np.ndarray:
    """``mask`` without the 3D connected parts smaller than ``fraction`` of its largest part."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (sizes >= fraction * sizes.max())[labels]


def clear_lungs(
    volume: Volume, pre: Preprocessed, config: PreprocessConfig, regions: Regions | None = None
) -> np.ndarray | None:
    """``pre.array`` (the network's input for ``volume``) with the lung field set to clear lung.

    The field is :func:`lung_field` as found (not widened, so the pleura and chest wall are kept;
    ``regions``: found already, else found here); clear lung is the median of the scan's own
    aerated lung (the field's voxels below :data:`LUNG_THRESHOLD_HU`), a robust estimate while
    lesions cover less than half of the aerated lung. Everything outside the field is left as it
    is. None when no lung field is found.
    """
    regions = regions if regions is not None else find_regions(volume, config)
    field, body = regions.lungs, regions.body
    if field is None:
        return None
    sz, sy, sx = body.stride
    coarse = volume.voxels[::sz, ::sy, ::sx]
    aerated = coarse[field & (coarse < lung_threshold(volume.units))]
    if aerated.size == 0:
        return None
    clear = np.full((1, 1, 1), np.median(aerated), dtype=np.float32)
    values = to_channels(clear, volume.units, config.windows_hu, config.in_channels)[:, 0, 0, 0]
    inside = dataclasses.replace(body, mask=field).sample(*preprocessed_positions(pre, volume))
    out = pre.array.copy()
    out[:, inside] = values[:, None]
    return out


# --------------------------------------------------------------------------- geometry
def to_input_grid(heat: np.ndarray, pre: Preprocessed, volume: Volume) -> np.ndarray:
    """Resample a map on the preprocessed grid ``(D', H', W')`` onto ``volume``'s voxel grid.

    Each input voxel inside the crop box is placed on the preprocessed grid through physical
    space: its LPS position (the input's origin, direction, spacing), expressed in the
    preprocessed grid's origin and spacing (same direction: preprocessing never rotates), then
    interpolated linearly (edges clamped, the pixel-centre convention of the resize). Voxels
    outside the crop box get 0. Inverts crop, pad, resize and z uniformization alike.
    """
    d, h, w = volume.shape
    out = np.zeros((d, h, w), dtype=np.float32)
    box = pre.box
    lo = (max(box.z0, 0), max(box.y0, 0), max(box.x0, 0))
    hi = (min(box.z1, d), min(box.y1, h), min(box.x1, w))
    if any(b <= a for a, b in zip(lo, hi)):
        return out
    direction = np.asarray(volume.direction, dtype=np.float64)
    # The input's origin in mm along each array axis, relative to the preprocessed origin.
    offset = np.linalg.solve(direction, np.asarray(volume.origin_mm) - np.asarray(pre.origin_mm))
    sampled = np.asarray(heat, dtype=np.float32)
    for axis in range(3):
        index = np.arange(lo[axis], hi[axis], dtype=np.float64)
        pos = (offset[axis] + volume.spacing_mm[axis] * index) / pre.spacing_mm[axis]
        sampled = _interp_axis(sampled, pos, axis)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = sampled
    return out


def preprocessed_positions(pre: Preprocessed, volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the preprocessed grid's voxel centres lie in ``volume``'s voxel indices (z, y, x):
    three 1D float arrays, the inverse of the mapping :func:`to_input_grid` uses."""
    direction = np.asarray(volume.direction, dtype=np.float64)
    offset = np.linalg.solve(direction, np.asarray(volume.origin_mm) - np.asarray(pre.origin_mm))
    return tuple(  # type: ignore[return-value]
        (pre.spacing_mm[axis] * np.arange(n, dtype=np.float64) - offset[axis]) / volume.spacing_mm[axis]
        for axis, n in enumerate(pre.array.shape[1:])
    )


def _interp_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``pos`` (edges clamped)."""
    n = a.shape[axis]
    p = np.clip(pos, 0, n - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1, 1, 1]
    shape[axis] = len(p)
    wt = (p - i0).astype(np.float32).reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - wt) + np.take(a, i1, axis=axis) * wt


# --------------------------------------------------------------------------- montage
def top_slices(heat: np.ndarray, n: int = 6) -> list[int]:
    """The ``n`` axial slices with the most heat (evenly spread when there is none), ascending."""
    d = heat.shape[0]
    n = max(1, min(n, d))
    per_slice = heat.reshape(d, -1).sum(axis=1)
    if not np.any(per_slice > 0):
        return sorted({int(k) for k in np.linspace(0, d - 1, n).round()})
    return sorted(int(k) for k in np.argsort(-per_slice, kind="stable")[:n])


def _display(volume: Volume) -> np.ndarray:
    if volume.units == Units.HU:
        return apply_window(volume.voxels, *LUNG_WINDOW_HU)
    return display_to_unit(volume.voxels)


def montage_png(
    volume: Volume, heat: np.ndarray, *, n_slices: int = 6, title: str = "", slices: list[int] | None = None
) -> bytes:
    """PNG of the most activated axial slices (or ``slices``): CT in the lung window, heat over it (jet)."""
    # Lazy (import ctcovid stays light); the object API, not pyplot: no global state, thread-safe.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = sorted(slices) if slices else top_slices(heat, n_slices)
    cols = min(3, len(ks))
    rows = (len(ks) + cols - 1) // cols
    gray = _display(volume)
    jet = colormaps["jet"]
    aspect = volume.spacing_mm[1] / volume.spacing_mm[2]
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows * min(max(aspect, 0.5), 2.0) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for j, k in enumerate(ks):
        ax = fig.add_subplot(rows, cols, j + 1)
        g = gray[k][..., None]
        hk = np.clip(heat[k], 0, 1)
        alpha = (0.55 * hk)[..., None]
        rgb = g * (1 - alpha) + jet(hk)[..., :3] * alpha
        ax.imshow(np.clip(rgb, 0, 1), aspect=aspect, interpolation="nearest")
        z_mm = volume.index_to_lps((k, 0, 0))[2]
        ax.set_title(f"slice {k}  z={z_mm:.0f} mm  max {hk.max():.2f}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
