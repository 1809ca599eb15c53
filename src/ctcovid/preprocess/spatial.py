"""In-plane geometry: crop boxes, aspect fitting and resizing of ``(..., H, W)`` arrays.

Interpolation convention (the only one used in ctcovid for in-plane resizing): *pixel centres*,
i.e. ``align_corners=False``. Output pixel ``o`` of an axis resized from ``n_in`` to ``n_out``
samples the input at ``(o + 0.5) * n_in / n_out - 0.5``; positions beyond the first/last pixel
centre take the edge value. This is ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=False)`` (used here: float32, multithreaded) and equals
``scipy.ndimage.zoom(x, (1, h/H, w/W), order=1, grid_mode=True, mode="nearest")``. The physical
extent of the image is preserved, so the spacing becomes ``spacing * n_in / n_out``.
``"nearest"`` uses ``nearest-exact`` (the pixel-centre nearest, not torch's legacy ``nearest``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ctcovid.errors import ConfigError

InplaneMode = Literal["linear", "nearest"]
INPLANE_MODES: tuple[str, ...] = ("linear", "nearest")
_TORCH_MODE = {"linear": "bilinear", "nearest": "nearest-exact"}


@dataclass(frozen=True)
class CropBox:
    """Half-open index ranges ``[z0, z1) x [y0, y1) x [x0, x1)`` of a crop.

    In-plane bounds may reach outside the image (negative or beyond the size) when a box was
    widened to an aspect ratio; :func:`crop_or_pad` fills that part with a constant.
    """

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def full(cls, shape: tuple[int, int, int]) -> CropBox:
        """The box covering a whole ``(D, H, W)`` array."""
        return cls(0, shape[0], 0, shape[1], 0, shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0

    @property
    def start(self) -> tuple[int, int, int]:
        return self.z0, self.y0, self.x0

    def contains(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> bool:
        """Whether every index ``(z[i], y[i], x[i])`` lies inside the box."""
        return bool(
            np.all((z >= self.z0) & (z < self.z1))
            and np.all((y >= self.y0) & (y < self.y1))
            and np.all((x >= self.x0) & (x < self.x1))
        )

    def as_dict(self) -> dict[str, int]:
        return {"z0": self.z0, "z1": self.z1, "y0": self.y0, "y1": self.y1, "x0": self.x0, "x1": self.x1}


def fit_box_to_aspect(box: CropBox, aspect_hw: float) -> CropBox:
    """Widen ``box`` in y or x, about its centre, until ``height / width == aspect_hw``.

    The box only grows (never cuts anything) and may reach outside the image; the excess is
    padded with air by :func:`crop_or_pad`. This keeps anatomical proportions when the crop is
    resized to a fixed H x W, instead of stretching a wide chest into a square.
    """
    h, w = box.y1 - box.y0, box.x1 - box.x0
    if h <= 0 or w <= 0:
        return box
    if h / w < aspect_hw:  # too wide: grow height
        new_h = round(w * aspect_hw)
        grow = new_h - h
        y0 = box.y0 - grow // 2
        return CropBox(box.z0, box.z1, y0, y0 + new_h, box.x0, box.x1)
    new_w = round(h / aspect_hw)
    grow = new_w - w
    x0 = box.x0 - grow // 2
    return CropBox(box.z0, box.z1, box.y0, box.y1, x0, x0 + new_w)


def crop_or_pad(array: np.ndarray, y: tuple[int, int], x: tuple[int, int], fill: float) -> np.ndarray:
    """Cut rows ``[y0, y1)`` and columns ``[x0, x1)`` from the last two axes of ``array``.

    Parts of the range outside the array are filled with ``fill``. Returns a view when the range
    lies inside the array, otherwise a new array.
    """
    h, w = array.shape[-2:]
    (y0, y1), (x0, x1) = y, x
    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    inner = array[..., iy0:iy1, ix0:ix1]
    if (iy0, iy1, ix0, ix1) == (y0, y1, x0, x1):
        return inner
    out = np.full((*array.shape[:-2], y1 - y0, x1 - x0), fill, dtype=array.dtype)
    out[..., iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = inner
    return out


def source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Input positions (pixel-centre convention) sampled by the ``n_out`` output pixels."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def resize_inplane(array: np.ndarray, size_hw: tuple[int, int], mode: InplaneMode = "linear") -> np.ndarray:
    """Resize the last two axes of a float array to ``size_hw`` (pixel-centre convention).

    Works on ``(H, W)``, ``(D, H, W)`` or ``(C, D, H, W)``; returns float32 (a copy even when the
    size is unchanged, so callers may write to it).
    """
    if mode not in _TORCH_MODE:
        raise ConfigError(f"unknown in-plane interpolation {mode!r}; valid: {', '.join(INPLANE_MODES)}")
    if array.ndim < 2:
        raise ValueError(f"resize_inplane needs at least 2 axes (..., H, W), got shape {array.shape}")
    h, w = (int(s) for s in size_hw)
    lead = array.shape[:-2]
    if array.shape[-2:] == (h, w):
        return np.array(array, dtype=np.float32, copy=True)
    planes = np.asarray(array, dtype=np.float32).reshape(1, -1, *array.shape[-2:])
    # All slices (and channels) go through one call as the channels of a single 2D image:
    # torch parallelises over them, and antialias=False keeps it a plain interpolation.
    out = F.interpolate(torch.from_numpy(planes), size=(h, w), mode=_TORCH_MODE[mode], **_align_kwargs(mode))
    return out.numpy().reshape(*lead, h, w)


def _align_kwargs(mode: str) -> dict[str, bool]:
    # torch rejects align_corners for the nearest modes; nearest-exact is pixel-centre already.
    return {"align_corners": False, "antialias": False} if mode == "linear" else {}


def resized_spacing(
    spacing_mm: tuple[float, float], n_in_hw: tuple[int, int], size_hw: tuple[int, int]
) -> tuple[float, float]:
    """In-plane spacing after resizing ``n_in_hw`` pixels to ``size_hw`` (extent preserved)."""
    return (
        spacing_mm[0] * n_in_hw[0] / size_hw[0],
        spacing_mm[1] * n_in_hw[1] / size_hw[1],
    )
