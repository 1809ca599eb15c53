"""COVID-CT-MD (Afshar et al., Scientific Data 2021): ``Index.csv`` plus subject folders of DICOM.

``Index.csv`` has the columns ``Label Index, Diagnosis, Relative Path, Folder/ID``; each subject
folder (``<Relative Path>/<Folder/ID>``, e.g. ``COVID-19/P001``) holds one DICOM series. The
diagnoses map to the CC-CCII labels: COVID-19 -> NCP, CAP -> CP, Normal -> Normal. The published
archive names the class folders ``COVID-19 subjects`` etc.; both spellings are looked up.
"""

from __future__ import annotations

from pathlib import Path

from ctcovid.data.cohorts.base import ImportResult, Progress, probe_scan, register_importer, require_dir
from ctcovid.data.manifest import ManifestRow, read_csv_records
from ctcovid.errors import ManifestError

DIAGNOSIS_MAP = {"COVID-19": "NCP", "CAP": "CP", "Normal": "Normal"}
COLUMNS = ("Diagnosis", "Relative Path", "Folder/ID")


@register_importer("covid-ct-md")
def import_covid_ct_md(root: str | Path, *, progress: Progress | None = None) -> ImportResult:
    base = require_dir(root, "COVID-CT-MD")
    index = base / "Index.csv"
    if not index.is_file():
        raise ManifestError(f"COVID-CT-MD index '{index}' not found")
    records = read_csv_records(index, COLUMNS, expected=COLUMNS)
    result = ImportResult(kind="covid-ct-md", root=str(base))
    for i, rec in enumerate(records, start=2):
        subject, diagnosis = rec["Folder/ID"], rec["Diagnosis"]
        rel_dir = rec["Relative Path"].strip("./") or diagnosis
        candidates = [base / rel_dir / subject, base / f"{diagnosis} subjects" / subject]
        folder = next((c for c in candidates if c.is_dir()), candidates[0])
        where = f"Index.csv row {i} ({subject})"
        if diagnosis not in DIAGNOSIS_MAP:
            result.skipped.append(
                (where, f"unknown diagnosis {diagnosis!r}; expected {', '.join(DIAGNOSIS_MAP)}")
            )
        else:
            probe = probe_scan(folder)
            if probe.error:
                result.skipped.append((where, f"{folder}: {probe.error}"))
            else:
                result.rows.append(
                    ManifestRow(
                        scan_id=subject,
                        patient_id=subject,
                        path=str(folder.relative_to(base)),
                        label=DIAGNOSIS_MAP[diagnosis],
                        format=probe.format,
                        source="covid-ct-md",
                        n_slices=probe.n_slices,
                        flags=tuple(probe.flags),
                    )
                )
        if progress:
            progress(i - 1, len(records))
    return result
