"""One synthetic chest CT scan in HU, with its lesion mask (see :mod:`ctcovid.synth.cohort`).

:func:`synth_case` renders the millimetre-defined phantom of :mod:`ctcovid.synth.phantom` (anatomy)
and :mod:`ctcovid.synth.lesions` (disease) on a voxel grid and adds scanner noise; :func:`synth_scan`
is its short form returning ``(Volume, lesion_mask)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctcovid.errors import ConfigError
from ctcovid.synth.lesions import SEVERITY_INVOLVEMENT, paint_covid, paint_pneumonia
from ctcovid.synth.phantom import Patient, Placement, render_anatomy
from ctcovid.types import DIAGNOSIS_LABELS, Diagnosis, ScanFormat, ScanSource, Volume

logger = logging.getLogger(__name__)

TASKS = ("diagnosis", "severity")
FORMATS = ("dicom", "nifti", "png", "npy")
_MANIFEST_FORMAT = {"dicom": "dicom", "nifti": "nifti", "png": "slices", "npy": "numpy"}
_ZIP_PREFIX = {"NCP": "COVID19", "CP": "CP", "Normal": "Normal"}  # CC-CCII archive names
_NCP_SCORE_WEIGHTS = np.array([0.25, 0.25, 0.2, 0.14, 0.1, 0.06])  # mild cases dominate real cohorts
# LPS unit vectors of the array axes (columns): axis 0 -> +z (superior), 1 -> +y (posterior), 2 -> +x (left)
_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
# Table height of the lung centre in scanner coordinates; any fixed number would do.
_LUNG_MID_Z_MM = -150.0


@dataclass
class SynthCase:
    """One synthetic scan with everything known about it."""

    volume: Volume
    lesion_mask: np.ndarray  # bool, volume grid
    tissue: np.ndarray  # uint8 :class:`~ctcovid.synth.phantom.Tissue` codes, volume grid
    label: str
    severity_score: int | None
    involvement: float  # fraction of lung voxels in the lesion mask
    patient: Patient


def _check_label(label: str) -> str:
    for d in Diagnosis:
        if str(label).lower() == d.value.lower():
            return d.value
    raise ConfigError(f"unknown label {label!r}; choose one of {', '.join(DIAGNOSIS_LABELS)}")


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a pair (low, high), got {value!r}") from e
    if not low <= lo <= hi <= high:
        raise ConfigError(f"{name}={value!r} must satisfy {low:g} <= low <= high <= {high:g}")
    return lo, hi


def draw_grid(
    rng: np.random.Generator,
    patient: Patient,
    *,
    slices: tuple[int, int] = (20, 40),
    in_plane: tuple[int, int] = (64, 64),
    fov_mm: tuple[float, float] = (340.0, 440.0),
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Draw a scan grid: slice count, square in-plane size and a field of view that fits the body.

    The slices always span the lungs plus 30-80 mm, so slice thickness follows from the count
    (20 slices -> ~15 mm, 60 -> ~5 mm, 300 -> ~1 mm), as in real scans of the whole chest.
    """
    d = int(rng.integers(slices[0], slices[1] + 1))
    h = int(rng.integers(in_plane[0], in_plane[1] + 1))
    fov = max(float(rng.uniform(*fov_mm)), 2 * patient.half_width_mm + 30.0)
    coverage = patient.lung_height_mm + float(rng.uniform(30.0, 80.0))
    return (d, h, h), (round(coverage / d, 4), round(fov / h, 4), round(fov / h, 4))


def _resolve_grid(
    rng: np.random.Generator,
    patient: Patient,
    shape: tuple[int, int, int] | None,
    spacing_mm: tuple[float, float, float] | None,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Fill in whichever of shape and spacing is missing from a drawn field of view and coverage."""
    if shape is None or spacing_mm is None:
        (d, h, w), (sz, sy, sx) = draw_grid(rng, patient)
        cov, fov = d * sz, h * sy
        if shape is not None:  # keep the requested grid, spread the drawn field over it
            spacing_mm = (cov / shape[0], fov / shape[1], fov / shape[2])
        elif spacing_mm is not None:  # keep the requested voxels, cover the drawn field with them
            shape = (round(cov / spacing_mm[0]), round(fov / spacing_mm[1]), round(fov / spacing_mm[2]))
        else:
            shape, spacing_mm = (d, h, w), (sz, sy, sx)
    if len(shape) != 3 or int(shape[0]) < 1 or min(int(shape[1]), int(shape[2])) < 16:
        raise ConfigError(f"shape {tuple(shape)} must be (slices >= 1, rows >= 16, columns >= 16)")
    if len(spacing_mm) != 3 or not all(float(x) > 0 for x in spacing_mm):
        raise ConfigError(f"spacing_mm {tuple(spacing_mm)} must be three positive numbers (z, y, x)")
    return (int(shape[0]), int(shape[1]), int(shape[2])), (
        float(spacing_mm[0]),
        float(spacing_mm[1]),
        float(spacing_mm[2]),
    )


def synth_case(
    label: str,
    *,
    rng: np.random.Generator,
    severity_score: int | None = None,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    patient: Patient | None = None,
    noise_hu: tuple[float, float] = (10.0, 20.0),
) -> SynthCase:
    """Like :func:`synth_scan`, returning a :class:`SynthCase` (tissue map, involvement, patient too).

    ``patient`` fixes the anatomy (follow-up scans); None draws one from ``rng``. Draws happen in a
    fixed order (patient, grid, placement, texture, disease, noise), so two calls with the same
    seed and physical field of view but different spacings show the same anatomy.
    """
    label = _check_label(label)
    if severity_score is not None:
        if label != Diagnosis.NCP.value:
            raise ConfigError(f"severity_score is only defined for label 'NCP', got label {label!r}")
        if isinstance(severity_score, bool) or severity_score not in SEVERITY_INVOLVEMENT:
            raise ConfigError(f"severity_score {severity_score!r} is outside the CNCB scale 1..6")
    patient = patient if patient is not None else Patient.random(rng)
    shape, spacing_mm = _resolve_grid(rng, patient, shape, spacing_mm)
    field_mm = (shape[0] * spacing_mm[0], shape[1] * spacing_mm[1], shape[2] * spacing_mm[2])
    placement = Placement.random(rng, patient, field_mm)
    anat = render_anatomy(patient, shape, spacing_mm, placement, rng)

    if label == Diagnosis.NCP.value:
        if severity_score is None:
            severity_score = int(rng.choice(6, p=_NCP_SCORE_WEIGHTS)) + 1
        lesions = paint_covid(anat, rng, severity_score)
        hu, mask, involvement = anat.composite(lesions.hu), lesions.mask, lesions.involvement
    elif label == Diagnosis.CP.value:
        lesions = paint_pneumonia(anat, rng)
        hu, mask, involvement = anat.composite(lesions.hu), lesions.mask, lesions.involvement
    else:
        hu, mask, involvement = anat.composite(), np.zeros(shape, bool), 0.0

    # Scanner noise: Gaussian, slightly correlated in-plane (reconstruction kernel), then integer HU.
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=(0, 0.7, 0.7))
    hu += np.float32(rng.uniform(*noise_hu) / max(float(noise.std()), 1e-6)) * noise
    np.clip(np.rint(hu, out=hu), -1024.0, 3071.0, out=hu)

    sz, sy, sx = spacing_mm
    origin = (
        sx / 2 - field_mm[2] / 2,
        sy / 2 - field_mm[1] / 2,
        sz / 2 - placement.lung_mid_z_mm + _LUNG_MID_Z_MM,
    )
    source = ScanSource(format=ScanFormat.NUMPY, path=f"synthetic:{label}", n_slices=shape[0])
    volume = Volume(hu, spacing_mm=spacing_mm, origin_mm=origin, direction=_DIRECTION.copy(), source=source)
    return SynthCase(volume, mask, anat.tissue, label, severity_score, involvement, patient)


def synth_scan(
    label: str,
    *,
    rng: np.random.Generator,
    severity_score: int | None = None,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> tuple[Volume, np.ndarray]:
    """Render one synthetic chest CT scan in HU and its lesion mask.

    Args:
        label: ``"NCP"`` (COVID-19), ``"CP"`` (common pneumonia) or ``"Normal"``.
        rng: the only source of randomness; the same generator state gives the same scan.
        severity_score: CNCB score 1..6 for ``"NCP"`` (lung involvement grows with it, see
            :mod:`ctcovid.synth.lesions`); None draws one, mild scores being more common.
        shape: ``(slices, rows, columns)``; None draws 20-40 slices of 64 x 64.
        spacing_mm: ``(z, y, x)`` voxel size; None spreads a drawn field of view (body width plus
            margin, 340-440 mm) and z coverage (lungs plus 30-80 mm) over ``shape``.

    Returns:
        ``(volume, lesion_mask)``: a float32 HU :class:`~ctcovid.types.Volume` in the canonical
        orientation with LPS geometry, and a bool mask of the lesions on the same grid (all
        False for ``"Normal"``).

    Raises:
        ConfigError: unknown label, a severity score on a non-COVID label or outside 1..6, or
            an impossible shape or spacing.
    """
    case = synth_case(label, rng=rng, severity_score=severity_score, shape=shape, spacing_mm=spacing_mm)
    return case.volume, case.lesion_mask
