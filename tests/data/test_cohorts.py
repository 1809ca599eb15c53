"""Importers on fixture trees with each dataset's real layout and its known defects."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctcovid.cli import main
from ctcovid.data.cohorts import import_cohort, list_importers
from ctcovid.data.manifest import read_manifest
from ctcovid.errors import ConfigError, ManifestError


def _slice_folder(d: Path, n: int, *, empty: int = 0, segmented: bool = False, size: int = 32) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for k in range(n):
        img = np.zeros((size, size), np.uint8)
        if not segmented:
            img[4:-4, 4:-4] = 230  # body wall: bright in a lung window
        img[10:-10, 8:14] = rng.integers(20, 60)  # lungs
        img[10:-10, -14:-8] = rng.integers(20, 60)
        Image.fromarray(img).save(d / f"{k}.png")
    for k in range(empty):
        (d / f"{n + k}.png").write_bytes(b"")


def _cc_ccii(root: Path) -> Path:
    _slice_folder(root / "NCP" / "1" / "100", 20)
    _slice_folder(root / "NCP" / "1" / "101", 20)  # second reconstruction, same count
    _slice_folder(root / "NCP" / "1" / "102", 4, empty=2)  # few slices + empty files
    for s in range(5):  # a patient with many scans
        _slice_folder(root / "NCP" / "2" / f"20{s}", 18 + s)
    _slice_folder(root / "CP" / "3" / "300", 20)
    _slice_folder(root / "CP" / "1" / "310", 20)  # same number as an NCP patient
    _slice_folder(root / "Normal" / "4" / "400", 20, segmented=True)
    (root / "Normal" / "5" / "500").mkdir(parents=True)  # empty scan folder
    _slice_folder(root / "Normal" / "6" / "600", 0, empty=3)  # only 0-byte files
    with (root / "unzip_filenames.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["zip_file", "label", "patient_id", "scan_id", "n_slice"])
        w.writerow(["NCP-1.zip", "NCP", "1", "100", "21"])
        w.writerow(["NCP-9.zip", "NCP", "9", "900", "10"])
    return root


def test_registry_lists_every_cohort() -> None:
    assert set(list_importers()) >= {
        "cc-ccii",
        "cncb-severity",
        "mosmed",
        "covid-ct-md",
        "medmnist",
        "folder",
        "csv",
    }


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown cohort kind 'ccii'; available: cc-ccii"):
        import_cohort("ccii", ".")


def test_cc_ccii_flags_known_defects_and_reconciles(tmp_path: Path) -> None:
    res = import_cohort("cc-ccii", str(_cc_ccii(tmp_path)))
    assert res.found == 13 == len(res.rows) + len(res.skipped)
    assert {p for p, _ in res.skipped} == {str(Path("Normal/5/500")), str(Path("Normal/6/600"))}
    by_id = {r.scan_id: r for r in res.rows}
    few = by_id["NCP-1-102"]
    assert few.n_slices == 4 and "few_slices" in few.flags and "empty_files=2" in few.flags
    assert "possible_reconstruction" in by_id["NCP-1-100"].flags
    assert "csv_n_slice=21" in by_id["NCP-1-100"].flags
    assert "multi_scan_patient=5" in by_id["NCP-2-200"].flags
    assert "segmented" in by_id["Normal-4-400"].flags
    assert "segmented" not in by_id["CP-3-300"].flags
    assert by_id["CP-1-310"].patient_id == "CP-1" and by_id["NCP-1-100"].patient_id == "NCP-1"
    assert any("under several classes" in w for w in res.warnings)
    assert any("not on disk" in w for w in res.warnings)


def test_cli_import_writes_a_valid_manifest_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _cc_ccii(tmp_path / "ccii")
    out = tmp_path / "elsewhere" / "manifest.csv"
    assert main(["import", "cc-ccii", str(root), "-o", str(out), "--option", "min_slices=5"]) == 0
    text = capsys.readouterr().out
    assert "found 13 scans: imported 11, skipped 2" in text
    assert "| total | 2 | 8 | 144 |" in text  # NCP: patients, scans, slices
    rows = read_manifest(out)  # paths were rebased to the manifest's folder and exist
    assert len(rows) == 11


def test_cli_import_rejects_unknown_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _cc_ccii(tmp_path / "ccii")
    assert (
        main(["import", "cc-ccii", str(root), "-o", str(tmp_path / "m.csv"), "--option", "min_slice=5"]) == 2
    )
    assert "unknown option 'min_slice' for importer 'cc-ccii'; valid: min_slices" in capsys.readouterr().err


def test_missing_root_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "cc-ccii", str(tmp_path / "nope"), "-o", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope' does not exist" in err


def test_cncb_groups_scores_with_offset_and_column_options(tmp_path: Path) -> None:
    for pid, n in (("11", 2), ("12", 1), ("13", 1), ("14", 1)):
        for s in range(n):
            _slice_folder(tmp_path / "NCP" / pid / f"{pid}0{s}", 20)
    _slice_folder(tmp_path / "CP" / "50" / "500", 20)  # not COVID: ignored by layout
    (tmp_path / "clinical.csv").write_text(
        "Patient ID,Score 0-5,Age\n11,0,50\n12,2,60\n13,5,70\n14,abc,1\n15,1,40\n"
    )
    res = import_cohort(
        "cncb-severity", str(tmp_path), metadata="clinical.csv", score_column="Score 0-5", score_offset=1
    )
    got = {r.patient_id: (r.severity_score, r.label) for r in res.rows}
    assert got == {"11": (1, "low"), "12": (3, "medium"), "13": (6, "high")}
    reasons = dict(res.skipped)
    assert any("abc" in why for why in reasons.values())
    assert reasons["15"] == "patient in metadata CSV has no scan folder"
    assert str(Path("NCP/14/1400")) in reasons
    assert "multi_scan_patient=2" in next(r for r in res.rows if r.patient_id == "11").flags


def test_cncb_wrong_column_names_the_file_and_columns(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("pid,sev\n1,2\n")
    with pytest.raises(
        ManifestError, match=r"metadata.csv': missing column\(s\) Patient ID, Severity; found pid, sev"
    ):
        import_cohort("cncb-severity", str(tmp_path))


def _nifti(path: Path, depth: int = 6) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((8, 8, depth), -1000, np.int16), np.eye(4)), str(path))


def test_mosmed_grades_and_skips_bad_files(tmp_path: Path) -> None:
    for g in range(5):
        _nifti(tmp_path / "studies" / f"CT-{g}" / f"study_{g:04d}.nii.gz")
    (tmp_path / "studies" / "CT-2" / "study_0099.nii.gz").write_bytes(b"not nifti")
    res = import_cohort("mosmed", str(tmp_path))
    assert res.found == 6 and len(res.skipped) == 1
    assert sorted((r.label, r.severity_score, r.n_slices) for r in res.rows)[0] == ("CT-0", 0, 6)


def test_covid_ct_md_maps_diagnoses(tmp_path: Path) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    def dcm(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.Modality = "CT"
        ds.save_as(path, enforce_file_format=True)

    for sub in ("COVID-19/P001", "CAP/cap001", "Normal subjects/normal001"):
        for k in range(3):
            dcm(tmp_path / sub / f"x{k}.dcm")
    (tmp_path / "Index.csv").write_text(
        "Label Index,Diagnosis,Relative Path,Folder/ID\n0,COVID-19,./COVID-19/,P001\n1,CAP,./CAP/,cap001\n"
        "2,Normal,./Normal/,normal001\n3,COVID-19,./COVID-19/,P404\n4,Flu,./Flu/,f1\n"
    )
    res = import_cohort("covid-ct-md", str(tmp_path))
    assert {(r.scan_id, r.label, r.n_slices) for r in res.rows} == {
        ("P001", "NCP", 3),
        ("cap001", "CP", 3),
        ("normal001", "Normal", 3),
    }
    assert res.found == 5 and any("unknown diagnosis 'Flu'" in why for _, why in res.skipped)


def test_medmnist_keeps_official_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "organmnist3d.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 255, (4, 28, 28, 28), dtype=np.uint8),
        train_labels=np.array([[0], [1], [2], [1]]),
        val_images=np.zeros((1, 28, 28, 28), np.uint8),
        val_labels=np.array([[3]]),
        test_images=np.zeros((2, 28, 28, 28), np.uint8),
        test_labels=np.array([[0], [4]]),
    )
    res = import_cohort("medmnist", str(path))
    assert [(r.split, r.label) for r in res.rows][:5] == [
        ("train", "0"),
        ("train", "1"),
        ("train", "2"),
        ("train", "1"),
        ("val", "3"),
    ]
    assert res.rows[-1].path == "organmnist3d.npz#test:1"
    from ctcovid.data.cohorts.medmnist import load_medmnist_volume

    np.testing.assert_array_equal(
        load_medmnist_volume(path, "train:2"), np.load(path)["train_images"][2].astype(np.float32)
    )


def test_folder_and_csv_importers(tmp_path: Path) -> None:
    _nifti(tmp_path / "tree" / "covid" / "P01_a.nii.gz")
    _nifti(tmp_path / "tree" / "covid" / "P01_b.nii.gz")
    _slice_folder(tmp_path / "tree" / "healthy" / "P02_x", 5)
    (tmp_path / "tree" / "healthy" / "notes.txt").write_text("hi")
    res = import_cohort("folder", str(tmp_path / "tree"), patient_regex=r"(P\d+)_")
    assert {(r.patient_id, r.label) for r in res.rows} == {("P01", "covid"), ("P02", "healthy")}
    assert res.skipped == [(str(Path("healthy/notes.txt")), res.skipped[0][1])]
    from ctcovid.data.manifest import write_manifest

    m = write_manifest(res.rows, tmp_path / "tree" / "mine.csv")
    again = import_cohort("csv", str(m))
    assert [r.scan_id for r in again.rows] == [r.scan_id for r in res.rows]
