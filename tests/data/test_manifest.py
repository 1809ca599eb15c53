from __future__ import annotations

from pathlib import Path

import pytest

from ctcovid.data.manifest import (
    COLUMNS,
    ManifestRow,
    read_manifest,
    rebase_rows,
    summary_table,
    write_manifest,
)
from ctcovid.errors import ManifestError


def _rows(tmp_path: Path) -> list[ManifestRow]:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    return [
        ManifestRow(
            "s1", "p1", "a", "NCP", format="slices", n_slices=40, flags=("few_slices", "empty_files=2")
        ),
        ManifestRow("s2", "p1", "b", "NCP", n_slices=30),
        ManifestRow("s3", "p2", "c", "Normal", n_slices=20),
    ]


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    path = write_manifest(rows, tmp_path / "m.csv")
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_manifest(path) == rows


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([",".join(COLUMNS), *lines]) + "\n")
    return path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["s1,p1,a,,NCP,,,,,,", "s2,p2,b,,covid,,,,,,"],
            r"row 3, column 'label': unknown label 'covid'; expected one of NCP, CP, Normal",
        ),
        (
            ["s1,p1,a,,NCP,,,,,,", "s1,p2,b,,NCP,,,,,,"],
            r"row 3, column 'scan_id': duplicate scan_id 's1' \(first at row 2\)",
        ),
        (
            ["s1,p1,a,,NCP,,,,,,", "s2,p1,b,,CP,,,,,,"],
            r"row 3, column 'label': patient 'p1' is labelled 'CP' here but 'NCP' at row 2",
        ),
        (["s1,p1,missing_dir,,NCP,,,,,,"], r"row 2, column 'path': file not found"),
        (["s1,p1,a,,NCP,9,,,,,"], r"row 2, column 'severity_score': 9 is outside 0..6"),
        (["s1,p1,a,,NCP,x,,,,,"], r"row 2, column 'severity_score': 'x' is not a number"),
        (["s1,,a,,NCP,,,,,,"], r"row 2, column 'patient_id': empty value"),
        (["s1,p1,a,,NCP,,,,,,holdout"], r"row 2, column 'split': 'holdout'"),
    ],
)
def test_validation_names_row_and_column(tmp_path: Path, lines: list[str], message: str) -> None:
    _rows(tmp_path)
    path = _write_csv(tmp_path / "m.csv", lines)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_wrong_columns_name_the_file_and_expected_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,file,class\n1,a,NCP\n")
    with pytest.raises(
        ManifestError, match=r"bad.csv': missing column\(s\) scan_id, patient_id, path, label"
    ):
        read_manifest(path)


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="nope.csv' does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_explicit_label_set_rejects_others(tmp_path: Path) -> None:
    path = write_manifest(_rows(tmp_path), tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="unknown label 'Normal'; expected one of NCP, CP"):
        read_manifest(path, labels=["NCP", "CP"])


def test_custom_labels_are_allowed_without_a_vocabulary(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    rows = [ManifestRow("s1", "p1", "a", "tumour")]
    assert read_manifest(write_manifest(rows, tmp_path / "m.csv"))[0].label == "tumour"


def test_rebase_rows_keeps_files_reachable(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    moved = rebase_rows(rows, tmp_path, tmp_path / "deeper" / "dir")
    assert moved[0].path == str(Path("..") / ".." / "a")
    out = write_manifest(moved, tmp_path / "deeper" / "dir" / "m.csv")
    assert [r.resolve(out.parent).resolve() for r in read_manifest(out)] == [tmp_path / n for n in "abc"]


def test_summary_table_counts_patients_scans_slices(tmp_path: Path) -> None:
    table = summary_table(_rows(tmp_path), {"s1": "train", "s2": "train", "s3": "test"})
    lines = table.splitlines()
    assert lines[0].startswith("| split | NCP patients | NCP scans | NCP slices | Normal patients")
    assert "| train | 1 | 2 | 70 | 0 | 0 | 0 |" in lines
    assert "| test | 0 | 0 | 0 | 1 | 1 | 20 |" in lines
    assert "| total | 1 | 2 | 70 | 1 | 1 | 20 |" in lines
