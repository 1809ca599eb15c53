"""Cohort manifests: one row per scan, written and read as CSV, validated on read.

Columns (in this order): ``scan_id, patient_id, path, format, label, severity_score, severity,
source, n_slices, flags, split``. ``path`` is relative to the manifest's folder unless absolute; a
volume inside an array file is addressed as ``file.npz#<split>:<index>`` (MedMNIST). ``flags`` is a
``;``-separated list of known defects (``few_slices``, ``segmented``, ``empty_files=3``,
``multi_scan_patient=5``, ...): importers flag, they never drop silently. ``split`` is empty unless
the dataset defines an official split (MedMNIST) or the user sets some scans aside (e.g. an
external test set); ``ctcovid split`` keeps those and assigns the rest (``ctcovid.data.splits``).

Validation names the row (1-based, header is row 1) and the column: unknown label, missing file,
duplicate ``scan_id``, one patient under two labels, a bad severity score.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctcovid.errors import ManifestError
from ctcovid.types import DIAGNOSIS_LABELS, SEVERITY_LABELS

COLUMNS: tuple[str, ...] = (
    "scan_id", "patient_id", "path", "format", "label", "severity_score",
    "severity", "source", "n_slices", "flags", "split",
)  # fmt: skip
REQUIRED: tuple[str, ...] = ("scan_id", "patient_id", "path", "label")
MOSMED_LABELS: tuple[str, ...] = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
KNOWN_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "diagnosis": DIAGNOSIS_LABELS,
    "severity": SEVERITY_LABELS,
    "mosmed": MOSMED_LABELS,
}
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestRow:
    """One scan of a cohort."""

    scan_id: str
    patient_id: str
    path: str
    label: str
    format: str = ""
    severity_score: int | None = None
    severity: str = ""
    source: str = ""
    n_slices: int = 0
    flags: tuple[str, ...] = ()
    split: str = ""

    def resolve(self, root: str | Path) -> Path:
        """Absolute path of the scan (the part before '#' for array-indexed rows)."""
        p = Path(self.path.split("#", 1)[0])
        return p if p.is_absolute() else Path(root) / p

    def with_flags(self, *flags: str) -> ManifestRow:
        return dataclasses.replace(self, flags=tuple(dict.fromkeys((*self.flags, *flags))))


def _row_to_csv(row: ManifestRow) -> dict[str, str]:
    d = dataclasses.asdict(row)
    d["severity_score"] = "" if row.severity_score is None else str(row.severity_score)
    d["flags"] = ";".join(row.flags)
    return {k: str(d[k]) for k in COLUMNS}


def rebase_rows(rows: Iterable[ManifestRow], from_root: str | Path, to_dir: str | Path) -> list[ManifestRow]:
    """Rewrite relative paths (relative to ``from_root``) to be relative to ``to_dir``."""
    out = []
    for r in rows:
        file_part, sep, address = r.path.partition("#")
        if Path(file_part).is_absolute():
            out.append(r)
            continue
        new = os.path.relpath(Path(from_root).resolve() / file_part, Path(to_dir).resolve())
        out.append(dataclasses.replace(r, path=new + sep + address))
    return out


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> Path:
    """Write rows as CSV atomically (temp file + rename) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(_row_to_csv(r))
    os.replace(tmp, out)
    return out


def read_csv_records(
    path: str | Path, required: Sequence[str], *, expected: Sequence[str] = (), hint: str = ""
) -> list[dict[str, str]]:
    """Rows of a CSV as dicts with stripped keys and values (a UTF-8 BOM is accepted).

    A missing ``required`` column raises ManifestError naming the file, the missing and the found
    columns (and ``expected``/``hint`` when given). Row ``i`` of the list is line ``i + 2``.
    """
    p = Path(path)
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            msg = f"'{p}': missing column(s) {', '.join(missing)}; found {', '.join(header) or 'no header'}"
            if expected:
                msg += f"; expected {', '.join(expected)}"
            raise ManifestError(msg + (f" ({hint})" if hint else ""))
        return [{k.strip(): (v or "").strip() for k, v in rec.items() if k} for rec in reader]


def _parse_row(rec: dict[str, str], where: str) -> ManifestRow:
    def get(col: str) -> str:
        return (rec.get(col) or "").strip()

    for col in REQUIRED:
        if not get(col):
            raise ManifestError(f"{where}, column '{col}': empty value")
    score_txt = get("severity_score")
    try:
        score = int(float(score_txt)) if score_txt else None
    except ValueError as e:
        raise ManifestError(f"{where}, column 'severity_score': {score_txt!r} is not a number") from e
    n_txt = get("n_slices")
    try:
        n_slices = int(n_txt) if n_txt else 0
    except ValueError as e:
        raise ManifestError(f"{where}, column 'n_slices': {n_txt!r} is not an integer") from e
    split = get("split")
    if split and split not in SPLITS:
        raise ManifestError(f"{where}, column 'split': {split!r} is not one of {', '.join(SPLITS)}")
    return ManifestRow(
        scan_id=get("scan_id"),
        patient_id=get("patient_id"),
        path=get("path"),
        label=get("label"),
        format=get("format"),
        severity_score=score,
        severity=get("severity"),
        source=get("source"),
        n_slices=n_slices,
        flags=tuple(f for f in get("flags").split(";") if f),
        split=split,
    )


def read_manifest(
    path: str | Path, *, labels: Sequence[str] | None = None, check_files: bool = True
) -> list[ManifestRow]:
    """Read and validate a manifest CSV.

    ``labels``: the allowed label names; when None, labels must all belong to one known vocabulary
    (diagnosis, severity, MosMed grades) if any of them does, else any non-empty names are allowed
    (user-defined ``folder`` cohorts). ``check_files``: every scan path must exist.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest '{p}' does not exist")
    records = read_csv_records(p, REQUIRED, expected=COLUMNS)
    rows = [_parse_row(rec, f"manifest '{p}' row {i}") for i, rec in enumerate(records, start=2)]
    validate_rows(rows, p, labels=labels, check_files=check_files)
    return rows


def infer_vocabulary(found: Iterable[str]) -> tuple[str, ...] | None:
    """The known vocabulary (diagnosis, severity, MosMed) that the labels claim, or None if none."""
    found_set = set(found)
    for vocab in KNOWN_VOCABULARIES.values():
        if found_set & set(vocab):
            return vocab
    return None


def validate_rows(
    rows: Sequence[ManifestRow],
    manifest_path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    check_files: bool = True,
) -> None:
    """Raise ManifestError naming the first bad row and column."""
    mp = Path(manifest_path)
    root = mp.parent
    allowed = tuple(labels) if labels is not None else infer_vocabulary(r.label for r in rows)
    seen: dict[str, int] = {}
    patient_label: dict[str, tuple[str, int]] = {}
    for i, r in enumerate(rows, start=2):
        where = f"manifest '{mp}' row {i}"
        if allowed is not None and r.label not in allowed:
            raise ManifestError(
                f"{where}, column 'label': unknown label {r.label!r}; expected one of {', '.join(allowed)}"
            )
        if r.scan_id in seen:
            raise ManifestError(
                f"{where}, column 'scan_id': duplicate scan_id {r.scan_id!r} (first at row {seen[r.scan_id]})"
            )
        seen[r.scan_id] = i
        prev = patient_label.setdefault(r.patient_id, (r.label, i))
        if prev[0] != r.label:
            raise ManifestError(
                f"{where}, column 'label': patient {r.patient_id!r} is labelled {r.label!r} here "
                f"but {prev[0]!r} at row {prev[1]}; one patient must have one label"
            )
        if r.severity_score is not None and not 0 <= r.severity_score <= 6:
            raise ManifestError(f"{where}, column 'severity_score': {r.severity_score} is outside 0..6")
        if check_files and not r.resolve(root).exists():
            raise ManifestError(f"{where}, column 'path': file not found: {r.resolve(root)}")


def summary_table(rows: Sequence[ManifestRow], splits: dict[str, str] | None = None) -> str:
    """Patients / scans / slices per class and split, in the layout of Table 1 of the diagnosis paper."""
    split_of = {r.scan_id: (splits or {}).get(r.scan_id) or r.split or "all" for r in rows}
    labels = sorted({r.label for r in rows}, key=_label_order)
    split_names = [s for s in (*SPLITS, "all") if s in set(split_of.values())]
    cell: dict[tuple[str, str], list[set[str] | int]] = defaultdict(lambda: [set(), 0, 0])
    for r in rows:
        for key in ((split_of[r.scan_id], r.label), ("total", r.label)):
            c = cell[key]
            c[0].add(r.patient_id)  # type: ignore[union-attr]
            c[1] += 1  # type: ignore[operator]
            c[2] += r.n_slices  # type: ignore[operator]
    head1 = "| split | " + " | ".join(f"{lab} patients | {lab} scans | {lab} slices" for lab in labels) + " |"
    sep = "|---" * (1 + 3 * len(labels)) + "|"
    lines = [head1, sep]
    show = split_names if split_names != ["all"] else []
    for s in [*show, "total"]:
        vals = []
        for lab in labels:
            pats, scans, slices = cell.get((s, lab), [set(), 0, 0])
            vals += [str(len(pats)), str(scans), str(slices)]  # type: ignore[arg-type]
        lines.append(f"| {s} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _label_order(label: str) -> tuple[int, str]:
    for vocab in KNOWN_VOCABULARIES.values():
        if label in vocab:
            return vocab.index(label), label
    return 99, label


def label_counts(rows: Iterable[ManifestRow]) -> Counter[str]:
    return Counter(r.label for r in rows)
