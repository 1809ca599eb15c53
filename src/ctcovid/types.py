"""Core value types (L0: stdlib + numpy only).

Geometry convention used everywhere in ctcovid
----------------------------------------------
``Volume.voxels`` is a float32 array of shape ``(D, H, W)``, array axes ``(z, y, x)``. For axial
CT, the canonical orientation every reader produces is:

* axis 0 (D) runs inferior -> superior (ascending position along the slice normal),
* axis 1 (H) runs anterior -> posterior (image rows, top of the image is anterior),
* axis 2 (W) runs patient right -> patient left (image columns, the radiological view).

This is the order DICOM stores an axial slice in (row cosine +x, column cosine +y in LPS), so a
slice ``voxels[k]`` looks like the slice a radiologist sees. ``spacing_mm`` is ``(z, y, x)`` in the
same order as the array axes. ``origin_mm`` is the LPS patient position (x, y, z), as in DICOM and
ITK, of the centre of voxel ``[0, 0, 0]``. ``direction`` is a 3x3 matrix whose column ``i`` is the
LPS unit vector along array axis ``i``, so the physical point of index ``(k, j, i)`` is
``origin_mm + direction @ (spacing_mm * (k, j, i))``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Units(str, Enum):
    """What the voxel values mean."""

    HU = "hu"  # Hounsfield units (DICOM after rescale, NIfTI CT, synthetic)
    DISPLAY = "display"  # 8-bit display values from PNG/JPG slice images (0..255), not HU


class ScanFormat(str, Enum):
    DICOM = "dicom"
    NIFTI = "nifti"
    SLICES = "slices"  # a folder of 2D slice images
    NUMPY = "numpy"
    METAIMAGE = "metaimage"  # .mha, .mhd (+ .raw)
    NRRD = "nrrd"  # .nrrd, .nhdr (+ data file)


class Diagnosis(str, Enum):
    """Labels of the diagnosis task (CC-CCII naming)."""

    NCP = "NCP"  # novel coronavirus pneumonia, COVID-19
    CP = "CP"  # common pneumonia
    NORMAL = "Normal"


class Severity(str, Enum):
    """Labels of the severity task (COVID-Net CT-S grouping of the CNCB scores 1..6)."""

    LOW = "low"  # scores 1-2
    MEDIUM = "medium"  # score 3
    HIGH = "high"  # scores 4-6


DIAGNOSIS_LABELS: tuple[str, ...] = tuple(d.value for d in Diagnosis)
SEVERITY_LABELS: tuple[str, ...] = tuple(s.value for s in Severity)


def severity_from_score(score: int) -> Severity:
    """Group a CNCB severity score (1..6) into low / medium / high as in COVID-Net CT-S."""
    if not 1 <= int(score) <= 6:
        raise ValueError(f"severity score {score!r} is outside 1..6")
    if score <= 2:
        return Severity.LOW
    if score == 3:
        return Severity.MEDIUM
    return Severity.HIGH


@dataclass
class ScanSource:
    """Where a volume came from and what happened while reading it."""

    format: ScanFormat
    path: str
    series_uid: str | None = None
    patient_id: str | None = None
    n_slices: int = 0
    other_series: list[str] = field(default_factory=list)  # "uid: n files, description" of unchosen series
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)
    # DICOM only: the file of each axis-0 slice, in the volume's slice order (what results written
    # back as DICOM reference; empty for other formats).
    slice_files: list[str] = field(default_factory=list)


# Columns: LPS unit vectors of array axes (z, y, x) in the canonical axial orientation above.
CANONICAL_DIRECTION: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0),
    (0.0, 1.0, 0.0),
    (1.0, 0.0, 0.0),
)


def _canonical() -> np.ndarray:
    return np.array(CANONICAL_DIRECTION, dtype=np.float64)


@dataclass
class Volume:
    """A CT scan: float32 voxels ``(D, H, W)`` with their geometry (see the module docstring)."""

    voxels: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=_canonical)
    units: Units = Units.HU
    source: ScanSource | None = None
    spacing_known: bool = True  # False for slice images without geometry (spacing defaults to 1 mm)

    def __post_init__(self) -> None:
        v = np.asarray(self.voxels)
        if v.ndim != 3:
            raise ValueError(f"Volume voxels must be 3D (D, H, W), got shape {v.shape}")
        if v.dtype != np.float32:
            v = v.astype(np.float32)
        self.voxels = v
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        if len(self.spacing_mm) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing_mm):
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        self.origin_mm = tuple(float(o) for o in self.origin_mm)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        d, h, w = self.voxels.shape
        return int(d), int(h), int(w)

    @property
    def warnings(self) -> list[str]:
        return self.source.warnings if self.source else []

    def with_voxels(self, voxels: np.ndarray, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
        """A copy holding new voxels (and optionally a new spacing), metadata kept."""
        return dataclasses.replace(
            self, voxels=voxels, spacing_mm=spacing_mm if spacing_mm is not None else self.spacing_mm
        )

    def index_to_lps(self, index: tuple[float, float, float]) -> np.ndarray:
        """Physical LPS position (x, y, z) in mm of array index (k, j, i)."""
        return np.asarray(self.origin_mm) + self.direction @ (np.asarray(self.spacing_mm) * np.asarray(index))
