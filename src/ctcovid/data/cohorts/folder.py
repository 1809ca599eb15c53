"""Generic cohorts: ``<root>/<label>/<scan>`` trees, and a user's own manifest CSV.

``folder``: every entry under a label folder is one scan (a DICOM series folder, a slice-image
folder, or a NIfTI / .npy / .npz file); the patient id is the scan name, or the first group of
``patient_regex`` matched against it (e.g. ``(P\\d+)_`` for ``P012_scan2.nii.gz``).

``csv``: a manifest the user wrote with at least ``scan_id, patient_id, path, label``; it is
validated like any manifest and missing slice counts are filled in.
"""

from __future__ import annotations

import dataclasses
import re
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
from ctcovid.data.manifest import ManifestRow, read_manifest
from ctcovid.errors import ManifestError


@register_importer("folder")
def import_folder(
    root: str | Path, *, patient_regex: str = "", min_slices: int = 16, progress: Progress | None = None
) -> ImportResult:
    base = require_dir(root, "folder cohort")
    pattern = re.compile(patient_regex) if patient_regex else None
    label_dirs = sorted(
        (d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: natural_key(d.name),
    )
    if not label_dirs:
        raise ManifestError(f"folder cohort root '{base}' has no label folders (<root>/<label>/<scan>)")
    entries = [
        (d.name, e)
        for d in label_dirs
        for e in sorted(
            (e for e in d.iterdir() if not e.name.startswith(".")), key=lambda e: natural_key(e.name)
        )
    ]
    result = ImportResult(kind="folder", root=str(base))
    for i, (label, entry) in enumerate(entries):
        rel = str(entry.relative_to(base))
        probe = probe_scan(entry)
        name = entry.name.split(".")[0]
        m = pattern.search(entry.name) if pattern else None
        if probe.error:
            result.skipped.append((rel, probe.error))
        elif pattern and not m:
            result.skipped.append((rel, f"name does not match patient_regex {patient_regex!r}"))
        else:
            pid = m.group(1) if m and m.groups() else (m.group(0) if m else name)
            result.rows.append(
                ManifestRow(
                    scan_id=f"{label}-{name}",
                    patient_id=pid,
                    path=rel,
                    label=label,
                    format=probe.format,
                    source="folder",
                    n_slices=probe.n_slices,
                    flags=tuple(probe.flags),
                )
            )
        if progress:
            progress(i + 1, len(entries))
    result.rows = flag_patients(result.rows, min_slices=min_slices)
    return result


@register_importer("csv")
def import_csv(root: str | Path, *, progress: Progress | None = None) -> ImportResult:
    """``root`` is the CSV file; paths in it are relative to its folder."""
    path = Path(root)
    rows = read_manifest(path, check_files=True)
    result = ImportResult(kind="csv", root=str(path.parent))
    for i, r in enumerate(rows):
        if not r.n_slices and "#" not in r.path:
            probe = probe_scan(r.resolve(path.parent))
            r = dataclasses.replace(r, n_slices=probe.n_slices, format=r.format or probe.format)
        result.rows.append(r)
        if progress:
            progress(i + 1, len(rows))
    return result
