"""MosMedData (Morozov et al. 2020): ``studies/CT-0..CT-4/study_XXXX.nii.gz``.

CT-0 is normal and CT-1..CT-4 grade the lung involvement (<25%, 25-50%, 50-75%, >75%). The label is
the grade name (``CT-k``) and ``severity_score`` is k; each study is one patient.
"""

from __future__ import annotations

from pathlib import Path

from ctcovid.data.cohorts.base import (
    ImportResult,
    Progress,
    natural_key,
    probe_scan,
    register_importer,
    require_dir,
)
from ctcovid.data.manifest import MOSMED_LABELS, ManifestRow
from ctcovid.errors import ManifestError


@register_importer("mosmed")
def import_mosmed(root: str | Path, *, progress: Progress | None = None) -> ImportResult:
    base = require_dir(root, "MosMedData")
    studies = base / "studies" if (base / "studies").is_dir() else base
    grade_dirs = [studies / g for g in MOSMED_LABELS if (studies / g).is_dir()]
    if not grade_dirs:
        raise ManifestError(f"MosMedData root '{base}' has no studies/CT-0..CT-4 folders")
    files = [
        (g.name, f)
        for g in grade_dirs
        for f in sorted(
            (f for f in g.iterdir() if not f.name.startswith(".")), key=lambda f: natural_key(f.name)
        )
    ]
    result = ImportResult(kind="mosmed", root=str(base))
    for i, (grade, f) in enumerate(files):
        rel = str(f.relative_to(base))
        probe = probe_scan(f)
        if probe.error or probe.format != "nifti":
            result.skipped.append((rel, probe.error or "not a NIfTI file"))
        else:
            stem = f.name.split(".")[0]
            result.rows.append(
                ManifestRow(
                    scan_id=stem,
                    patient_id=stem,
                    path=rel,
                    label=grade,
                    format="nifti",
                    severity_score=int(grade[-1]),
                    source="mosmed",
                    n_slices=probe.n_slices,
                )
            )
        if progress:
            progress(i + 1, len(files))
    return result
