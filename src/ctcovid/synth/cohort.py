"""Synthetic chest CT: the demo's embedded dataset and every test's fixture.

:func:`synth_scan` renders one scan in HU from the millimetre-defined phantom of
:mod:`ctcovid.synth.phantom` (anatomy) and :mod:`ctcovid.synth.lesions` (disease), adds scanner
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

from ctcovid.data.manifest import COLUMNS as MANIFEST_COLUMNS
from ctcovid.errors import ConfigError
from ctcovid.synth.phantom import Patient
from ctcovid.synth.scan import (  # noqa: F401  (re-exported: the scan-level API lives there)
    _DIRECTION,
    _LUNG_MID_Z_MM,
    _MANIFEST_FORMAT,
    _NCP_SCORE_WEIGHTS,
    _ZIP_PREFIX,
    FORMATS,
    TASKS,
    SynthCase,
    _check_label,
    _check_range,
    draw_grid,
    synth_case,
    synth_scan,
)
from ctcovid.types import DIAGNOSIS_LABELS, Diagnosis, Volume, severity_from_score

logger = logging.getLogger(__name__)


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
