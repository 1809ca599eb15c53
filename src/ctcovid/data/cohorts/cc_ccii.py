"""CC-CCII (China Consortium of Chest CT Image Investigation; Zhang et al., Cell 2020).

Layout after unzipping: ``{NCP,CP,Normal}/<patient_id>/<scan_id>/<slice>.png|jpg`` (slice files
numbered, not zero-padded), optionally with ``unzip_filenames.csv``
(``zip_file,label,patient_id,scan_id,n_slice``) and ``lesions_slices.csv`` at the root.

Known defects of the real release, all flagged and none dropped silently: scans with very few
slices (``few_slices``), already lung-segmented scans (``segmented``), 0-byte slice files
(``empty_files=N``), several reconstructions of one study (``possible_reconstruction``), many scans
per patient (``multi_scan_patient=N``), a slice count that disagrees with ``unzip_filenames.csv``
(``csv_n_slice=N``). Patient ids are prefixed with the class (``NCP-12``) only when the same number
is used under two classes, which the real release does.
"""

from __future__ import annotations

from pathlib import Path

from ctcovid.data.cohorts.base import (
    ImportResult,
    Progress,
    flag_patients,
    is_segmented,
    natural_key,
    probe_scan,
    register_importer,
    require_dir,
)
from ctcovid.data.manifest import ManifestRow, read_csv_records
from ctcovid.errors import ManifestError
from ctcovid.types import DIAGNOSIS_LABELS

CSV_COLUMNS = ("zip_file", "label", "patient_id", "scan_id", "n_slice")


def _read_unzip_csv(path: Path) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for i, rec in enumerate(read_csv_records(path, CSV_COLUMNS, expected=CSV_COLUMNS), start=2):
        try:
            out[(rec["label"], rec["patient_id"], rec["scan_id"])] = int(rec["n_slice"])
        except ValueError as e:
            raise ManifestError(
                f"'{path}' row {i}, column 'n_slice': {rec['n_slice']!r} is not an integer"
            ) from e
    return out


@register_importer("cc-ccii")
def import_cc_ccii(
    root: str | Path, *, min_slices: int = 16, progress: Progress | None = None
) -> ImportResult:
    """Import a CC-CCII tree; ``min_slices`` sets the ``few_slices`` flag threshold."""
    base = require_dir(root, "CC-CCII")
    label_dirs = [base / lab for lab in DIAGNOSIS_LABELS if (base / lab).is_dir()]
    if not label_dirs:
        raise ManifestError(
            f"CC-CCII root '{base}' has none of the class folders {', '.join(DIAGNOSIS_LABELS)}"
        )
    csv_counts = (
        _read_unzip_csv(base / "unzip_filenames.csv") if (base / "unzip_filenames.csv").is_file() else {}
    )
    scans = [
        (lab_dir.name, pat, scan)
        for lab_dir in label_dirs
        for pat in sorted((p for p in lab_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
        for scan in sorted((s for s in pat.iterdir() if s.is_dir()), key=lambda s: natural_key(s.name))
    ]
    numbers_by_label: dict[str, set[str]] = {}
    for lab, pat, _ in scans:
        numbers_by_label.setdefault(pat.name, set()).add(lab)
    result = ImportResult(kind="cc-ccii", root=str(base))
    shared = sorted((n for n, labs in numbers_by_label.items() if len(labs) > 1), key=natural_key)
    if shared:
        result.warnings.append(
            f"{len(shared)} patient number(s) appear under several classes (e.g. {', '.join(shared[:3])}); "
            "they are kept as different patients with the class as prefix (NCP-<n>)"
        )
    seen_on_disk = set()
    for i, (label, pat, scan) in enumerate(scans):
        seen_on_disk.add((label, pat.name, scan.name))
        probe = probe_scan(scan)
        if probe.error:
            result.skipped.append((str(scan.relative_to(base)), probe.error))
        else:
            flags = list(probe.flags)
            if probe.format == "slices" and is_segmented(scan):
                flags.append("segmented")
            expected = csv_counts.get((label, pat.name, scan.name))
            if expected is not None and expected != probe.n_slices:
                flags.append(f"csv_n_slice={expected}")
            shared_number = len(numbers_by_label[pat.name]) > 1
            result.rows.append(
                ManifestRow(
                    scan_id=f"{label}-{pat.name}-{scan.name}",
                    patient_id=f"{label}-{pat.name}" if shared_number else pat.name,
                    path=str(scan.relative_to(base)),
                    label=label,
                    format=probe.format,
                    source="cc-ccii",
                    n_slices=probe.n_slices,
                    flags=tuple(flags),
                )
            )
        if progress:
            progress(i + 1, len(scans))
    listed_missing = [k for k in csv_counts if k not in seen_on_disk]
    if listed_missing:
        result.warnings.append(
            f"{len(listed_missing)} scan(s) listed in unzip_filenames.csv are not on disk, e.g. "
            + ", ".join("/".join(k) for k in listed_missing[:3])
        )
    result.rows = flag_patients(result.rows, min_slices=min_slices)
    return result
