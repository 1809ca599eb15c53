"""Synthetic chest CT: the demo's embedded dataset and every test's fixture.

:func:`synth_scan` renders one scan in HU from the millimetre-defined phantom of
:mod:`ctcovid.data.phantom` (anatomy) and :mod:`ctcovid.data.lesions` (disease), adds scanner
noise and returns it with its lesion mask. :func:`generate_cohort` writes a cohort in the layout
of a public dataset, so the importers and readers meet the same trees real data comes in:

* ``task="diagnosis"``: CC-CCII, ``<label>/<patient_id>/<scan_id>/<k>.png`` for ``png`` (a DICOM
  series folder for ``dicom``; ``<scan_id>.nii.gz`` / ``<scan_id>.npy`` files for ``nifti`` /
  ``npy``) plus ``unzip_filenames.csv`` (``zip_file,label,patient_id,scan_id,n_slice``).
* ``task="severity"``: CNCB, COVID-19 scans only, ``<patient_id>/<scan_id>/...`` plus
  ``metadata.csv`` with one row per patient: ``Patient ID`` (as the folder), ``Age``,
  ``Sex(Male1/Female2)``, ``Severity`` (score 1..6, shared by all scans of the patient) and
  ``Critical illness`` (1 when the score is 5 or 6). The real file holds more clinical columns;
  these are the ones the importer and the paper use.
* always ``labels.csv``: one row per scan in the columns of :mod:`ctcovid.data.manifest`
  (``path`` relative to the cohort root, ``format``, ``label``, ``severity_score``, ...) followed
  by ``spacing_z_mm, spacing_y_mm, spacing_x_mm`` and ``mask``; and ``masks/<scan_id>.npz``
  holding ``mask`` (bool, the volume's ``(D, H, W)`` grid) and ``spacing_mm`` for scoring
  explanations against the true lesions.

Every scan is deterministic in ``(seed, scan index)`` and every patient in ``(seed, patient
index)``: patients' follow-up scans share their anatomy, nothing reads a global RNG.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ctcovid.data.lesions import SEVERITY_INVOLVEMENT, paint_covid, paint_pneumonia
from ctcovid.data.manifest import COLUMNS as MANIFEST_COLUMNS
from ctcovid.data.phantom import Patient, Placement, render_anatomy
from ctcovid.errors import ConfigError
from ctcovid.types import DIAGNOSIS_LABELS, Diagnosis, ScanFormat, ScanSource, Volume, severity_from_score

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
    tissue: np.ndarray  # uint8 :class:`~ctcovid.data.phantom.Tissue` codes, volume grid
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
            :mod:`ctcovid.data.lesions`); None draws one, mild scores being more common.
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


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic cohort to write; the defaults (60 small scans) take seconds.

    Ranges are inclusive ``(low, high)`` pairs drawn per scan. ``slices`` supports 20-300 (any
    count >= 1 works); the z coverage is the lungs plus a margin, so thickness follows the count.
    """

    n: int = 60
    task: str = "diagnosis"  # "diagnosis" (CC-CCII layout) | "severity" (CNCB layout)
    format: str = "png"  # "dicom" | "nifti" | "png" | "npy"
    seed: int = 0
    slices: tuple[int, int] = (20, 40)
    in_plane: tuple[int, int] = (64, 64)
    fov_mm: tuple[float, float] = (340.0, 440.0)
    scans_per_patient: tuple[int, int] = (1, 3)
    noise_hu: tuple[float, float] = (10.0, 20.0)
    window_hu: tuple[float, float] = (-600.0, 1500.0)  # (level, width) of PNG slices
    transfer_syntax: str = "explicit_le"  # DICOM: "explicit_le" | "rle" | "jpeg2000" | "jpegls"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"n={self.n!r} must be a positive integer (number of scans)")
        if self.task not in TASKS:
            raise ConfigError(f"task={self.task!r} is not valid; choose one of {', '.join(TASKS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"format={self.format!r} is not valid; choose one of {', '.join(FORMATS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")
        syntaxes = ("explicit_le", "rle", "jpeg2000", "jpegls")
        if self.transfer_syntax not in syntaxes:
            raise ConfigError(
                f"transfer_syntax={self.transfer_syntax!r} is not valid; choose one of {', '.join(syntaxes)}"
            )
        for name, low, high, integer in (
            ("slices", 1, 1000, True), ("in_plane", 32, 1024, True), ("fov_mm", 150.0, 700.0, False),
            ("scans_per_patient", 1, 50, True), ("noise_hu", 0.0, 200.0, False),
        ):  # fmt: skip
            lo, hi = _check_range(name, getattr(self, name), low, high)
            if integer and (lo != int(lo) or hi != int(hi)):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be integers")
            object.__setattr__(self, name, (int(lo), int(hi)) if integer else (lo, hi))
        try:
            level, width = (float(x) for x in self.window_hu)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"window_hu must be (level, width), got {self.window_hu!r}") from e
        if width <= 0:
            raise ConfigError(f"window_hu={self.window_hu!r}: the width (second value) must be positive")
        object.__setattr__(self, "window_hu", (level, width))


@dataclass
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out_dir: str
    task: str
    format: str
    n_scans: int
    n_patients: int
    n_slices: int
    scans_per_label: dict[str, int]
    patients_per_label: dict[str, int]
    label_files: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Planned:
    index: int
    scan_id: str
    patient_index: int
    patient_id: str
    label: str
    score: int | None


def _plan(cfg: SynthConfig) -> list[_Planned]:
    """Labels, patients (1..k scans each, ids unique across classes) and scores of every scan."""
    rng = np.random.default_rng([cfg.seed, 0])
    if cfg.task == "diagnosis":
        counts = {lab: cfg.n // 3 + (i < cfg.n % 3) for i, lab in enumerate(DIAGNOSIS_LABELS)}
    else:
        counts = {Diagnosis.NCP.value: cfg.n}
    cycle = list(rng.permutation(6) + 1)  # severity task: patients cycle through all six scores
    plans: list[_Planned] = []
    n_patients = 0
    for label, count in counts.items():
        left = count
        while left > 0:
            k = min(left, int(rng.integers(cfg.scans_per_patient[0], cfg.scans_per_patient[1] + 1)))
            score = None
            if label == Diagnosis.NCP.value:
                score = (
                    int(cycle[n_patients % 6])
                    if cfg.task == "severity"
                    else int(rng.choice(6, p=_NCP_SCORE_WEIGHTS)) + 1
                )
            for _ in range(k):
                i = len(plans)
                plans.append(_Planned(i, str(1001 + i), n_patients, str(n_patients + 1), label, score))
            n_patients += 1
            left -= k
    return plans


def _write_scan(volume: Volume, root: Path, rel: str, cfg: SynthConfig, patient_id: str) -> str:
    """Write one scan under ``root/rel`` in ``cfg.format``; return its path relative to ``root``."""
    from ctcovid.io.write import write_dicom_series, write_nifti, write_slices

    if cfg.format == "png":
        write_slices(volume, root / rel, window_hu=cfg.window_hu)
    elif cfg.format == "dicom":
        write_dicom_series(
            volume, root / rel, patient_id=patient_id, series_description="synthetic chest CT",
            transfer_syntax=cfg.transfer_syntax,
        )  # fmt: skip
    elif cfg.format == "nifti":
        rel += ".nii.gz"
        write_nifti(volume, root / rel)
    else:
        rel += ".npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, volume.voxels.astype(np.int16))  # integer HU: exact and half the size
    return rel


def _clear_previous(root: Path) -> None:
    """Refuse a foreign non-empty folder; remove the scans a previous synthetic cohort listed."""
    if not root.exists() or not any(root.iterdir()):
        return
    labels = root / "labels.csv"
    if not labels.is_file():
        raise ConfigError(
            f"output folder '{root}' is not empty and holds no synthetic cohort; choose an empty folder"
        )
    base = root.resolve()
    with labels.open(newline="") as f:
        for row in csv.DictReader(f):
            for rel in (row.get("path", ""), row.get("mask", "")):
                target = (root / rel).resolve()
                if not rel or base not in target.parents or not target.exists():
                    continue  # only what the old cohort listed, and only inside the folder
                shutil.rmtree(target) if target.is_dir() else target.unlink()
                for parent in target.parents:  # patient and label folders left empty
                    if parent == base or any(parent.iterdir()):
                        break
                    parent.rmdir()


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def generate_cohort(
    out_dir: str | Path, cfg: SynthConfig, *, progress: Callable[[int, int], None] | None = None
) -> CohortSummary:
    """Write ``cfg.n`` synthetic scans, their label files and lesion masks under ``out_dir``.

    See the module docstring for the layouts. ``progress(done, total)`` is called after each scan.
    A folder holding a previous synthetic cohort is overwritten; any other non-empty folder is
    refused with a :class:`~ctcovid.errors.ConfigError`.
    """
    start = time.perf_counter()
    root = Path(out_dir)
    _clear_previous(root)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    plans = _plan(cfg)
    patients: dict[int, Patient] = {}
    labels: list[dict[str, object]] = []
    unzip: list[dict[str, object]] = []
    per_label: dict[str, int] = {}
    for plan in plans:
        if plan.patient_index not in patients:
            patients[plan.patient_index] = Patient.random(
                np.random.default_rng([cfg.seed, 1, plan.patient_index])
            )
        patient = patients[plan.patient_index]
        rng = np.random.default_rng([cfg.seed, 2, plan.index])
        shape, spacing = draw_grid(rng, patient, slices=cfg.slices, in_plane=cfg.in_plane, fov_mm=cfg.fov_mm)
        case = synth_case(
            plan.label, rng=rng, severity_score=plan.score, shape=shape, spacing_mm=spacing,
            patient=patient, noise_hu=cfg.noise_hu,
        )  # fmt: skip
        if case.volume.source is not None:
            case.volume.source.patient_id = plan.patient_id
        base = plan.label + "/" if cfg.task == "diagnosis" else ""
        rel = _write_scan(case.volume, root, f"{base}{plan.patient_id}/{plan.scan_id}", cfg, plan.patient_id)
        mask_rel = f"masks/{plan.scan_id}.npz"
        np.savez_compressed(root / mask_rel, mask=case.lesion_mask, spacing_mm=np.asarray(spacing))
        group = severity_from_score(plan.score).value if plan.score is not None else ""
        label = group if cfg.task == "severity" else plan.label
        labels.append({
            "scan_id": plan.scan_id, "patient_id": plan.patient_id, "path": rel,
            "format": _MANIFEST_FORMAT[cfg.format], "label": label,
            "severity_score": "" if plan.score is None else plan.score, "severity": group,
            "source": "synthetic", "n_slices": shape[0], "flags": "", "split": "",
            "spacing_z_mm": spacing[0], "spacing_y_mm": spacing[1], "spacing_x_mm": spacing[2], "mask": mask_rel,
        })  # fmt: skip
        k = per_label.get(plan.label, 0)
        per_label[plan.label] = k + 1
        zip_file = f"{_ZIP_PREFIX[plan.label]}-{1 + k // 50}.zip"
        unzip.append({"zip_file": zip_file, "label": plan.label, "patient_id": plan.patient_id,
                      "scan_id": plan.scan_id, "n_slice": shape[0]})  # fmt: skip
        if progress is not None:
            progress(plan.index + 1, len(plans))

    extra = ["spacing_z_mm", "spacing_y_mm", "spacing_x_mm", "mask"]
    files = [_write_csv(root / "labels.csv", [*MANIFEST_COLUMNS, *extra], labels)]
    if cfg.task == "diagnosis":
        files.append(_write_csv(root / "unzip_filenames.csv", list(unzip[0]), unzip))
    else:
        meta = {}
        for plan in plans:
            pt = patients[plan.patient_index]
            meta[plan.patient_id] = {
                "Patient ID": plan.patient_id, "Age": pt.age, "Sex(Male1/Female2)": pt.sex,
                "Severity": plan.score, "Critical illness": int((plan.score or 0) >= 5),
            }  # fmt: skip
        rows = list(meta.values())
        files.append(_write_csv(root / "metadata.csv", list(rows[0]), rows))

    scans_per_label: dict[str, int] = {}
    patients_per_label: dict[str, set[str]] = {}
    for row in labels:
        lab = str(row["label"])
        scans_per_label[lab] = scans_per_label.get(lab, 0) + 1
        patients_per_label.setdefault(lab, set()).add(str(row["patient_id"]))
    summary = CohortSummary(
        out_dir=str(root), task=cfg.task, format=cfg.format, n_scans=len(labels),
        n_patients=len(patients), n_slices=sum(int(str(r["n_slices"])) for r in labels),
        scans_per_label=scans_per_label, patients_per_label={k: len(v) for k, v in patients_per_label.items()},
        label_files=[str(f) for f in files], seconds=round(time.perf_counter() - start, 3),
    )  # fmt: skip
    logger.info("wrote %d synthetic scans (%s, %s) to %s in %.1f s", summary.n_scans, cfg.task, cfg.format,
                root, summary.seconds)  # fmt: skip
    return summary
