"""synth_scan's contract and the cohorts generate_cohort writes (layouts, label files, masks)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ctcovid.errors import ConfigError
from ctcovid.synth.cohort import SynthConfig, generate_cohort, synth_scan
from ctcovid.types import ScanFormat, Units

SMALL = {"slices": (20, 22), "in_plane": (48, 48)}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_synth_scan_returns_an_hu_volume_and_a_matching_mask() -> None:
    vol, mask = synth_scan("NCP", rng=np.random.default_rng(0), severity_score=3, shape=(24, 64, 64))
    assert vol.shape == (24, 64, 64) and vol.voxels.dtype == np.float32
    assert vol.units is Units.HU
    assert vol.source is not None and vol.source.format is ScanFormat.NUMPY and vol.source.n_slices == 24
    assert np.array_equal(vol.voxels, np.rint(vol.voxels)) and vol.voxels.min() >= -1024
    assert mask.shape == vol.shape and mask.dtype == bool and mask.any()


def test_synth_scan_geometry_is_canonical_lps() -> None:
    vol, _ = synth_scan(
        "Normal", rng=np.random.default_rng(0), shape=(20, 64, 64), spacing_mm=(12.0, 6.0, 6.0)
    )
    assert vol.spacing_mm == (12.0, 6.0, 6.0)
    # axis 0 -> +z (superior), axis 1 -> +y (posterior), axis 2 -> +x (patient left)
    assert np.array_equal(vol.direction[:, 0], [0, 0, 1]) and np.array_equal(vol.direction[:, 2], [1, 0, 0])
    centre = vol.index_to_lps((0.0, 31.5, 31.5))
    assert centre[:2] == pytest.approx([0.0, 0.0])  # field centred on the scanner axis


def test_default_grid_is_small_and_covers_the_chest() -> None:
    vol, _ = synth_scan("CP", rng=np.random.default_rng(1))
    d, h, w = vol.shape
    assert 20 <= d <= 40 and h == w == 64
    assert 230 < d * vol.spacing_mm[0] < 400  # lungs plus margins


def test_same_seed_gives_identical_scans_and_different_seeds_differ() -> None:
    a = synth_scan("NCP", rng=np.random.default_rng(7), shape=(20, 48, 48))
    b = synth_scan("NCP", rng=np.random.default_rng(7), shape=(20, 48, 48))
    c = synth_scan("NCP", rng=np.random.default_rng(8), shape=(20, 48, 48))
    assert np.array_equal(a[0].voxels, b[0].voxels) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0].voxels, c[0].voxels)


def test_label_is_case_insensitive_and_unknown_labels_are_refused() -> None:
    _vol, mask = synth_scan("normal", rng=np.random.default_rng(0), shape=(20, 48, 48))
    assert not mask.any()
    with pytest.raises(ConfigError, match=r"'covid'.*NCP, CP, Normal"):
        synth_scan("covid", rng=np.random.default_rng(0))


@pytest.mark.parametrize(("label", "score"), [("CP", 2), ("NCP", 7), ("NCP", 0)])
def test_bad_severity_scores_are_refused(label: str, score: int) -> None:
    with pytest.raises(ConfigError, match="severity"):
        synth_scan(label, rng=np.random.default_rng(0), severity_score=score, shape=(20, 48, 48))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "grading"}, r"task='grading'.*diagnosis, severity"),
        ({"format": "jpg"}, r"format='jpg'.*dicom, nifti, png, npy"),
        ({"n": 0}, r"n=0"),
        ({"slices": (40, 20)}, r"slices=\(40, 20\)"),
        ({"in_plane": (16, 64)}, r"in_plane"),
        ({"window_hu": (-600.0, 0.0)}, r"window_hu"),
        ({"transfer_syntax": "zip"}, r"transfer_syntax='zip'.*explicit_le"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**kwargs)


def test_config_accepts_lists_from_toml() -> None:
    cfg = SynthConfig(slices=[20, 30], fov_mm=[350, 400])  # type: ignore[arg-type]
    assert cfg.slices == (20, 30) and cfg.fov_mm == (350.0, 400.0)


@pytest.fixture(scope="module")
def diagnosis_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list]:
    out = tmp_path_factory.mktemp("cc_ccii")
    calls: list[tuple[int, int]] = []
    summary = generate_cohort(
        out, SynthConfig(n=9, seed=3, **SMALL), progress=lambda i, n: calls.append((i, n))
    )
    return out, summary, calls


def test_diagnosis_png_cohort_has_the_cc_ccii_layout(diagnosis_png: tuple[Path, object, list]) -> None:
    out, _, _ = diagnosis_png
    rows = _rows(out / "labels.csv")
    assert len(rows) == 9
    for row in rows:
        scan = out / row["path"]
        assert row["path"] == f"{row['label']}/{row['patient_id']}/{row['scan_id']}"
        names = sorted(p.name for p in scan.iterdir())
        assert names == sorted(f"{k}.png" for k in range(int(row["n_slices"])))


def test_unzip_filenames_csv_matches_the_scans(diagnosis_png: tuple[Path, object, list]) -> None:
    out, _, _ = diagnosis_png
    unzip = _rows(out / "unzip_filenames.csv")
    assert list(unzip[0]) == ["zip_file", "label", "patient_id", "scan_id", "n_slice"]
    labels = {r["scan_id"]: r for r in _rows(out / "labels.csv")}
    for row in unzip:
        assert row["patient_id"].isdigit() and row["scan_id"].isdigit()
        assert row["label"] == labels[row["scan_id"]]["label"]
        assert int(row["n_slice"]) == len(list((out / labels[row["scan_id"]]["path"]).glob("*.png")))


def test_cohort_counts_reconcile(diagnosis_png: tuple[Path, object, list]) -> None:
    out, summary, calls = diagnosis_png
    rows = _rows(out / "labels.csv")
    assert summary.scans_per_label == {"NCP": 3, "CP": 3, "Normal": 3}  # type: ignore[attr-defined]
    assert summary.n_scans == 9 and summary.n_slices == sum(int(r["n_slices"]) for r in rows)  # type: ignore[attr-defined]
    assert summary.n_patients == len({r["patient_id"] for r in rows})  # type: ignore[attr-defined]
    patient_labels = {(r["patient_id"], r["label"]) for r in rows}
    assert len(patient_labels) == summary.n_patients  # type: ignore[attr-defined]  # ids unique across classes
    assert calls == [(i, 9) for i in range(1, 10)]


def test_masks_are_saved_on_the_scan_grid(diagnosis_png: tuple[Path, object, list]) -> None:
    out, _, _ = diagnosis_png
    for row in _rows(out / "labels.csv"):
        with np.load(out / row["mask"]) as npz:
            mask = npz["mask"]
            assert mask.shape == (int(row["n_slices"]), 48, 48) and mask.dtype == bool
            assert float(npz["spacing_mm"][0]) == pytest.approx(float(row["spacing_z_mm"]))
        assert mask.any() == (row["label"] != "Normal")


def test_labels_csv_reads_as_a_manifest(diagnosis_png: tuple[Path, object, list]) -> None:
    from ctcovid.data.manifest import read_manifest

    rows = read_manifest(diagnosis_png[0] / "labels.csv")
    assert {r.label for r in rows} == {"NCP", "CP", "Normal"}
    assert all((r.severity_score is not None) == (r.label == "NCP") for r in rows)


def test_severity_cohort_has_the_cncb_layout_and_metadata(tmp_path: Path) -> None:
    cfg = SynthConfig(n=8, task="severity", format="npy", seed=1, scans_per_patient=(1, 2), **SMALL)
    summary = generate_cohort(tmp_path, cfg)
    rows = _rows(tmp_path / "labels.csv")
    meta = {r["Patient ID"]: r for r in _rows(tmp_path / "metadata.csv")}
    assert list(next(iter(meta.values())))[:4] == ["Patient ID", "Age", "Sex(Male1/Female2)", "Severity"]
    assert len(meta) == summary.n_patients and len(rows) == 8
    for row in rows:
        assert row["path"] == f"{row['patient_id']}/{row['scan_id']}.npy"
        assert np.load(tmp_path / row["path"]).shape[0] == int(row["n_slices"])
        assert meta[row["patient_id"]]["Severity"] == row["severity_score"]
        assert row["label"] in {"low", "medium", "high"}


def test_patients_can_have_several_scans(tmp_path: Path) -> None:
    generate_cohort(tmp_path, SynthConfig(n=6, format="npy", scans_per_patient=(2, 2), **SMALL))
    rows = _rows(tmp_path / "labels.csv")
    per_patient: dict[str, int] = {}
    for r in rows:
        per_patient[r["patient_id"]] = per_patient.get(r["patient_id"], 0) + 1
    assert sorted(per_patient.values()) == [2, 2, 2]


def test_dicom_and_nifti_cohorts_write_readable_files(tmp_path: Path) -> None:
    import nibabel as nib

    generate_cohort(tmp_path / "d", SynthConfig(n=3, format="dicom", **SMALL))
    for row in _rows(tmp_path / "d" / "labels.csv"):
        assert len(list((tmp_path / "d" / row["path"]).glob("*.dcm"))) == int(row["n_slices"])
    generate_cohort(tmp_path / "n", SynthConfig(n=3, format="nifti", **SMALL))
    for row in _rows(tmp_path / "n" / "labels.csv"):
        assert row["path"].endswith(f"{row['scan_id']}.nii.gz")
        assert nib.load(tmp_path / "n" / row["path"]).shape == (48, 48, int(row["n_slices"]))


def test_rerun_replaces_a_previous_cohort_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    generate_cohort(tmp_path, SynthConfig(n=3, format="npy", seed=0, **SMALL))
    generate_cohort(tmp_path, SynthConfig(n=3, format="npy", seed=1, **SMALL))
    assert len(list(tmp_path.rglob("*.npy"))) == 3
    assert all(any(d.iterdir()) for d in tmp_path.rglob("*") if d.is_dir())  # no empty folders left over
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    foreign = tmp_path / "other"
    with pytest.raises(ConfigError, match="not empty"):
        generate_cohort(foreign, SynthConfig(n=3, format="npy", **SMALL))
