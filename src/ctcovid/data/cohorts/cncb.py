"""CNCB COVID-19 CT cohort with clinical severity scores (the cohort of COVID-Net CT-S).

The scans are the CC-CCII release hosted by the China National Center for Bioinformation:
``[NCP/]<patient_id>/<scan_id>/<slice>.png|jpg``. Severity comes from the clinical metadata CSV,
one row per patient. The public CSV's column names and score range are not documented well, so
both are options:

* ``patient_column`` (default ``"Patient ID"``) and ``score_column`` (default ``"Severity"``);
* ``score_offset`` (default 0) is added to the CSV value to get the paper's 1..6 scale (use 1 for a
  file that counts 0..5).

Scores are grouped as in COVID-Net CT-S: low (1-2), medium (3), high (4-6); the group is the
manifest label and the raw score is kept in ``severity_score``.
"""

from __future__ import annotations

from pathlib import Path

from ctcovid.data.cohorts.base import (
    ImportResult,
    Progress,
    flag_patients,
    natural_key,
    probe_scan,
    register_importer,
    require_dir,
)
from ctcovid.data.manifest import ManifestRow, read_csv_records
from ctcovid.errors import ManifestError
from ctcovid.types import severity_from_score


def _read_scores(
    path: Path, patient_column: str, score_column: str, offset: int, result: ImportResult
) -> dict[str, int]:
    records = read_csv_records(
        path, (patient_column, score_column), hint="set the patient_column= / score_column= options"
    )
    scores: dict[str, int] = {}
    for i, rec in enumerate(records, start=2):
        pid = (rec.get(patient_column) or "").strip()
        raw = (rec.get(score_column) or "").strip()
        try:
            score = int(float(raw)) + offset
            severity_from_score(score)
        except ValueError:
            result.skipped.append(
                (
                    f"{path.name} row {i} (patient {pid or '?'})",
                    f"severity {raw!r} + offset {offset} is not a score in 1..6",
                )
            )
            continue
        if pid:
            scores[pid] = score
    return scores


def _patient_dirs(base: Path) -> dict[str, Path]:
    """Patient folders at depth 1 (``<pid>/``) or 2 (``NCP/<pid>/``), by name."""
    out: dict[str, Path] = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        if d.name in ("CP", "Normal"):
            continue  # not COVID-19: no severity
        if d.name == "NCP":
            out.update({p.name: p for p in d.iterdir() if p.is_dir()})
        else:
            out[d.name] = d
    return out


@register_importer("cncb-severity")
def import_cncb(
    root: str | Path,
    *,
    metadata: str = "metadata.csv",
    patient_column: str = "Patient ID",
    score_column: str = "Severity",
    score_offset: int = 0,
    min_slices: int = 16,
    progress: Progress | None = None,
) -> ImportResult:
    """Import CNCB severity: ``metadata`` is relative to ``root`` unless absolute."""
    base = require_dir(root, "CNCB")
    meta = Path(metadata) if Path(metadata).is_absolute() else base / metadata
    if not meta.is_file():
        raise ManifestError(f"CNCB metadata CSV '{meta}' not found (pass metadata=PATH)")
    result = ImportResult(kind="cncb-severity", root=str(base))
    scores = _read_scores(meta, patient_column, score_column, score_offset, result)
    dirs = _patient_dirs(base)
    for pid in sorted(set(scores) - set(dirs), key=natural_key):
        result.skipped.append((pid, "patient in metadata CSV has no scan folder"))
    items = [
        (pid, d, s)
        for pid, d in sorted(dirs.items(), key=lambda kv: natural_key(kv[0]))
        for s in sorted((s for s in d.iterdir() if s.is_dir()), key=lambda s: natural_key(s.name))
    ]
    for i, (pid, _, scan) in enumerate(items):
        rel = str(scan.relative_to(base))
        if pid not in scores:
            result.skipped.append((rel, "patient not in metadata CSV (no severity score)"))
        else:
            probe = probe_scan(scan)
            if probe.error:
                result.skipped.append((rel, probe.error))
            else:
                score = scores[pid]
                group = severity_from_score(score).value
                result.rows.append(
                    ManifestRow(
                        scan_id=f"{pid}-{scan.name}",
                        patient_id=pid,
                        path=rel,
                        label=group,
                        format=probe.format,
                        severity_score=score,
                        severity=group,
                        source="cncb",
                        n_slices=probe.n_slices,
                        flags=tuple(probe.flags),
                    )
                )
        if progress:
            progress(i + 1, len(items))
    result.rows = flag_patients(result.rows, min_slices=min_slices)
    return result
