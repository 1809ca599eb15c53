"""Scan quality measurements: what a scan holds, measured before a model is asked about it.

:func:`measure` reduces a :class:`~ctcovid.types.Volume` to a :class:`ScanStats` of plain values
(JSON-able, small enough to keep per scan in a manifest or a checkpoint). Judging them (what is
"too few slices", "not a chest") is :mod:`ctcovid.predict.quality`'s job; nothing here decides.

The lung field
--------------
Inside the hole-filled body mask of :func:`~ctcovid.preprocess.body.find_body` (the lungs are
holes in every axial slice, so they are body there), voxels below the body threshold (-500 HU,
or 100 for 8-bit display values) are lung, airway or gas. Their 3D connected components are
sorted out on the body's coarse grid (about 3 mm voxels, so a 300x512x512 scan costs tens of
milliseconds):

* for HU scans, a component more than half of whose voxels are below -950 HU (the emphysema
  threshold) and smaller than :data:`GAS_MAX_ML` is gas (colon, stomach, a trachea standing
  alone), not lung parenchyma, which lies around -850 HU with vessels in it. Measured on the
  shared real scans: lungs 1 % below -950 HU, bowel gas 54-74 %. The size limit keeps a lung that
  is mostly below -950 HU (severe emphysema; a sharp kernel with noise: 42-56 % of the synthetic
  lungs' voxels after an unsharp mask) a lung. (Display values come through an unknown window, so
  they skip this test.)
* the largest remaining component is lung, and so is every other one at least
  :data:`LUNG_COMPONENT_FRACTION` of its size (the two lungs are separate components when the
  coarse grid misses the main bronchi); smaller ones are noise, bowel gas, air pockets in folds.

The lungs are *cut* at an end of the scan when their area in the end slice is more than
:data:`CUT_AREA_RATIO` of their largest area in any slice. On the shared chest CT the lung area
rises to a quarter of its maximum 20 mm below the apices and 38 mm above the lowest slice of the
bases, so a cut flag means that at least about that much lung is missing; a scan that clips only
the tip of an apex, or whose lungs taper off inside the field, is not cut.

Without a known spacing (slice images) volumes and extents in mm are not measured (None), the
z axis is not strided (published slice folders are often a subset of far-apart slices), and
``lung_fraction`` (lung voxels per body voxel) stands in for the volume.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage as ndi

# _erode_inplane: body.py's shift-based erosion, ~30x faster than scipy's binary_erosion here.
from ctcovid.preprocess.body import COARSE_MM, _erode_inplane, default_threshold, find_body
from ctcovid.types import ScanFormat, Units, Volume

# Voxels below this are padding outside the reconstructed field (-2048, -3024 and -3072 are
# common PixelPaddingValues), not air; they are left out of the air value.
PADDING_BELOW_HU = -1500.0
AIR_PERCENTILE = 0.5
# Typical axial CT field of view, used only to choose the coarse grid when the spacing is unknown.
FIELD_OF_VIEW_GUESS_MM = 350.0
# The emphysema threshold: lung parenchyma is mostly above it, gas (bowel, stomach) mostly below.
GAS_HU = -950.0
GAS_MAJORITY = 0.5
# A component this large is a lung, however dark: bowel gas pockets are far smaller (220 mL for the
# shared abdomen scan's largest), while one lung holds 1-4 L, and a severely emphysematous (or
# sharp-kernel, noisy) lung can have most of its voxels below -950 HU.
GAS_MAX_ML = 800.0
# Lung components smaller than this fraction of the largest one are not lung.
LUNG_COMPONENT_FRACTION = 0.2
# Slices whose lung area is below this fraction of the largest do not count towards the extent.
LUNG_SLICE_AREA_RATIO = 0.03
# The lungs are cut at an end when the end slice holds more than this fraction of the largest
# lung area of the scan (see the module docstring for why a quarter).
CUT_AREA_RATIO = 0.25
# The slice normal must lie within this angle of the patient's head-feet axis for "axial".
AXIAL_TILT_DEG = 30.0

# Reader warnings (ctcovid.io) that bear on the quality of the volume, kept in ScanStats.
_READER_WARNING = re.compile(
    r"missing slices|uneven slice spacing|could not be decoded|no ImagePositionPatient|NaN or infinite",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ScanStats:
    """What :func:`measure` found in a scan; plain values, JSON-able through :meth:`to_dict`.

    Indices ``low``/``high`` are the first and last slices of the array (axis 0); ``z_ascending``
    says whether axis 0 runs towards the head, i.e. whether ``low`` is the inferior end (lung
    bases) and ``high`` the superior end (apices).
    """

    units: str  # "hu" | "display"
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    spacing_known: bool
    axial: bool | None  # slice normal within AXIAL_TILT_DEG of head-feet; None: geometry unknown
    tilt_deg: float | None  # angle between the slice normal and the head-feet axis
    z_ascending: bool | None  # axis 0 runs inferior -> superior (None: geometry unknown)
    air_value: float | None  # AIR_PERCENTILE-th percentile of voxels (padding left out for HU)
    body_found: bool
    body_fraction: float  # body mask voxels / all voxels
    lung_fraction: float  # lung-field voxels / body voxels
    lung_ml: float | None  # None without a known spacing
    lung_extent_mm: float | None  # craniocaudal extent of the lung field; None without spacing
    lung_slices: int  # slices from the first to the last one holding >= 3 % of the largest lung area
    lung_end_ratio_low: float  # lung area in the first slice / largest lung area (0 without lungs)
    lung_end_ratio_high: float  # same for the last slice
    lung_cut_low: bool  # lung_end_ratio_low > CUT_AREA_RATIO: the scan ends inside the lungs
    lung_cut_high: bool
    reader_warnings: tuple[str, ...] = ()  # the reader's warnings about missing/uneven slices etc.

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists for tuples); :meth:`from_dict` reverses it."""
        d = dataclasses.asdict(self)
        for key in ("shape", "spacing_mm", "reader_warnings"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanStats:
        """Rebuild from :meth:`to_dict`'s output.

        Keys this version does not know are ignored (statistics stored by a newer ctcovid in a
        cache or checkpoint stay readable); a missing field raises ``TypeError``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["shape"] = tuple(int(n) for n in d["shape"])
        kw["spacing_mm"] = tuple(float(s) for s in d["spacing_mm"])
        kw["reader_warnings"] = tuple(str(w) for w in d.get("reader_warnings", ()))
        return cls(**kw)

    @property
    def cut(self) -> bool:
        return self.lung_cut_low or self.lung_cut_high


def measure(volume: Volume) -> ScanStats:
    """Measure ``volume``: geometry, air value, body and lung field (see the module docstring)."""
    units = Units(volume.units)
    voxels = volume.voxels
    spacing = volume.spacing_mm
    tilt, ascending = _orientation(volume)
    grid_spacing = spacing if volume.spacing_known else _guess_grid_spacing(volume.shape)
    body = find_body(voxels, grid_spacing, units=units)
    sz, sy, sx = body.stride
    coarse = np.ascontiguousarray(voxels[::sz, ::sy, ::sx])  # read once; every later pass is fast
    air = _air_value(coarse, units)
    coarse_ml = sz * sy * sx * float(np.prod(spacing)) / 1000.0 if volume.spacing_known else None
    lung = (
        _lung_field(coarse, body.mask, units, coarse_ml) if body.found else np.zeros(coarse.shape, dtype=bool)
    )

    n_body = int(body.mask.sum()) if body.found else 0
    n_lung = int(lung.sum())
    area = lung.sum(axis=(1, 2))
    # The extent counts slices holding a real share of lung: the trachea alone (about 1 % of the
    # largest lung area) runs far above the apices and would lengthen every scan of the neck.
    present = np.flatnonzero(area >= LUNG_SLICE_AREA_RATIO * area.max()) if area.any() else area[:0]
    if present.size:
        first, last = int(present[0]), int(present[-1])
        # Coarse slice i stands for full slices i*sz .. i*sz+sz-1 (the last one may be shorter).
        lung_slices = min(voxels.shape[0], last * sz + sz) - first * sz
        # Rounded before the flags, so that a judge re-deriving them from the ratios agrees.
        ratio_low, ratio_high = _r(area[0] / area.max(), 3), _r(area[-1] / area.max(), 3)
    else:
        lung_slices, ratio_low, ratio_high = 0, 0.0, 0.0
    lung_ml = extent = None
    if volume.spacing_known:
        lung_ml = n_lung * sz * sy * sx * float(np.prod(spacing)) / 1000.0
        extent = lung_slices * spacing[0]

    return ScanStats(
        units=units.value,
        shape=volume.shape,
        spacing_mm=(_r(spacing[0], 4), _r(spacing[1], 4), _r(spacing[2], 4)),
        spacing_known=bool(volume.spacing_known),
        axial=None if tilt is None else bool(tilt <= AXIAL_TILT_DEG),
        tilt_deg=None if tilt is None else _r(tilt, 1),
        z_ascending=ascending,
        air_value=None if air is None else _r(air, 1),
        body_found=bool(body.found),
        body_fraction=_r(n_body / body.mask.size, 4),
        lung_fraction=_r(n_lung / n_body, 4) if n_body else 0.0,
        lung_ml=None if lung_ml is None else _r(lung_ml, 1),
        lung_extent_mm=None if extent is None else _r(extent, 1),
        lung_slices=int(lung_slices),
        lung_end_ratio_low=ratio_low,
        lung_end_ratio_high=ratio_high,
        lung_cut_low=ratio_low > CUT_AREA_RATIO,
        lung_cut_high=ratio_high > CUT_AREA_RATIO,
        reader_warnings=tuple(w for w in volume.warnings if _READER_WARNING.search(w)),
    )


def _guess_grid_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    # Without a spacing the coarse grid is chosen as if the slices spanned the usual field of
    # view (a 512-pixel slice -> 0.7 mm pixels; a 64-pixel one -> 5.5 mm, which a 1 mm guess
    # would shrink to a few coarse voxels). z is not strided: a folder of slice images may hold
    # only every fifth slice of the scan.
    _, h, w = shape
    return COARSE_MM, FIELD_OF_VIEW_GUESS_MM / h, FIELD_OF_VIEW_GUESS_MM / w


def _r(x: float, digits: int) -> float:
    return round(float(x), digits)


def _orientation(volume: Volume) -> tuple[float | None, bool | None]:
    """(tilt of the slice normal from head-feet in degrees, axis 0 points superior), or Nones.

    Slice images and arrays without geometry carry a default direction, not a measured one; so
    does a DICOM series without ImageOrientationPatient.
    """
    src = volume.source
    unknown = (src is not None and src.format == ScanFormat.SLICES) or not volume.spacing_known
    if src is not None and any("no ImagePositionPatient" in w for w in src.warnings):
        unknown = True
    if unknown:
        return None, None
    normal = np.asarray(volume.direction, dtype=np.float64)[:, 0]
    norm = float(np.linalg.norm(normal))
    if not math.isfinite(norm) or norm == 0.0:
        return None, None
    s = float(normal[2]) / norm  # LPS: z is superior
    return math.degrees(math.acos(min(1.0, abs(s)))), s > 0


def _air_value(coarse: np.ndarray, units: Units) -> float | None:
    finite = np.isfinite(coarse)
    if units == Units.HU:
        finite &= coarse >= PADDING_BELOW_HU
    values = coarse[finite]
    if values.size == 0:
        return None
    return float(np.percentile(values, AIR_PERCENTILE))


def _lung_field(
    coarse: np.ndarray, body_mask: np.ndarray, units: Units, voxel_ml: float | None = None
) -> np.ndarray:
    """Bool mask on the coarse grid of the lung field (see the module docstring)."""
    # The body mask was dilated by one coarse voxel (a ring of outside air); two erosions remove
    # that ring and any air in skin folds, and cannot reach the lungs behind the chest wall.
    inside = _erode_inplane(_erode_inplane(body_mask))
    low = inside & (coarse < default_threshold(units))
    labels, n = ndi.label(low)
    if n == 0:
        return low
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    if units == Units.HU:
        gas = np.bincount(labels.ravel(), weights=(coarse < GAS_HU).ravel(), minlength=n + 1)
        is_gas = gas > GAS_MAJORITY * np.maximum(counts, 1)
        if voxel_ml is not None:  # lung-sized components stay lung (emphysema, sharp kernels)
            is_gas &= counts * voxel_ml < GAS_MAX_ML
        counts[is_gas] = 0
    if counts.max() == 0:
        return np.zeros_like(low)
    keep = counts >= LUNG_COMPONENT_FRACTION * counts.max()
    keep[0] = False
    return keep[labels]
