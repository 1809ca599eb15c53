"""Patient-level splits: grouped by patient, stratified by label, reproducible from a seed.

A patient's scans always land in the same split (no leakage between train and test). Within each
label the patients are shuffled with ``numpy.random.default_rng(seed)`` and cut into test, val and
train by the requested fractions (rounded, at least one patient per non-empty fraction when the
class has enough patients). Splits already in the manifest (its ``split`` column: MedMNIST's
official split, or an external test set a user set aside) are kept row by row, also when only some
patients carry one: only the patients without a split are assigned, by the fractions above. A
patient whose scans carry different splits, or a split on some scans and none on others, is an
error that names the patient. ``k``-fold assigns every patient a fold 0..k-1, stratified the same way.

The split file is written next to the manifest as ``<manifest stem>.split.csv`` with the columns
``scan_id, patient_id, label, split, fold``.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctcovid.data.manifest import SPLITS, ManifestRow
from ctcovid.errors import ConfigError, ManifestError


def _patients_by_label(rows: Sequence[ManifestRow]) -> dict[str, list[str]]:
    by_label: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_label[r.label].add(r.patient_id)
    return {lab: sorted(p) for lab, p in sorted(by_label.items())}


def split_patients(
    rows: Sequence[ManifestRow], *, val: float = 0.2, test: float = 0.2, seed: int = 0
) -> dict[str, str]:
    """Map scan_id -> 'train' | 'val' | 'test'.

    Rows that carry a split keep it; the patients with none are split by ``val`` / ``test``
    (stratified by label, grouped by patient, seeded).

    Raises:
        ManifestError: a patient's scans carry different splits, or some carry one and some not.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"split fractions val={val}, test={test} must be in [0, 1) and sum below 1")
    patient_split = _given_splits(rows)
    rng = np.random.default_rng(seed)
    todo = [r for r in rows if r.patient_id not in patient_split]
    for _, patients in _patients_by_label(todo).items():
        order = [patients[i] for i in rng.permutation(len(patients))]
        n = len(order)
        n_test = _count(n, test)
        n_val = _count(n - n_test, val / (1 - test) if test < 1 else 0.0) if n - n_test > 1 else 0
        for i, pid in enumerate(order):
            patient_split[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return {r.scan_id: patient_split[r.patient_id] for r in rows}


def _given_splits(rows: Sequence[ManifestRow]) -> dict[str, str]:
    """patient_id -> split for the patients whose rows carry one (all the same, else an error)."""
    seen: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        seen[r.patient_id][r.split].append(r.scan_id)
    given: dict[str, str] = {}
    for pid, by_split in seen.items():
        if len(by_split) > 1:
            parts = "; ".join(
                f"{split or 'no split'}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                for split, ids in sorted(by_split.items())
            )
            raise ManifestError(
                f"patient {pid!r} has scans in different splits ({parts}) in the manifest's 'split' "
                "column: give all of a patient's scans the same split, or leave all empty"
            )
        (split,) = by_split
        if split:
            given[pid] = split
    return given


def _count(n: int, frac: float) -> int:
    """round(n * frac), but at least 1 when frac > 0 and a patient can be spared for training."""
    if frac <= 0 or n < 2:
        return 0
    return min(max(1, round(n * frac)), n - 1)


def kfold_patients(rows: Sequence[ManifestRow], *, k: int = 5, seed: int = 0) -> dict[str, int]:
    """Map scan_id -> fold in 0..k-1, patients grouped, labels stratified (round-robin per label)."""
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for _, patients in _patients_by_label(rows).items():
        for i, j in enumerate(rng.permutation(len(patients))):
            fold_of[patients[j]] = (i + offset) % k
        offset += len(patients)  # keep fold sizes balanced across labels
    return {r.scan_id: fold_of[r.patient_id] for r in rows}


def leaking_patients(rows: Sequence[ManifestRow], assignment: dict[str, str]) -> dict[str, set[str]]:
    """Patients whose scans are in more than one split, with those splits."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        seen[r.patient_id].add(assignment[r.scan_id])
    return {p: s for p, s in seen.items() if len(s) > 1}


def split_path(manifest: str | Path) -> Path:
    m = Path(manifest)
    return m.with_name(f"{m.stem}.split.csv")


def write_split(
    rows: Sequence[ManifestRow], assignment: dict[str, str], folds: dict[str, int] | None, out: str | Path
) -> Path:
    """Write the split CSV to ``out`` (see :func:`split_path` for the default next to a manifest)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scan_id", "patient_id", "label", "split", "fold"])
        for r in rows:
            w.writerow(
                [
                    r.scan_id,
                    r.patient_id,
                    r.label,
                    assignment[r.scan_id],
                    "" if folds is None else folds[r.scan_id],
                ]
            )
    os.replace(tmp, out)
    return out


def read_split(path: str | Path) -> dict[str, str]:
    """scan_id -> split from a split file; errors name the row."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"split file '{p}' does not exist (run: ctcovid split MANIFEST)")
    out: dict[str, str] = {}
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"scan_id", "split"} <= set(reader.fieldnames or []):
            raise ManifestError(f"split file '{p}' needs the columns scan_id and split")
        for i, rec in enumerate(reader, start=2):
            if rec["split"] not in SPLITS:
                raise ManifestError(
                    f"split file '{p}' row {i}, column 'split': {rec['split']!r} is not one of {', '.join(SPLITS)}"
                )
            out[rec["scan_id"]] = rec["split"]
    return out
