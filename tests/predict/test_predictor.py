from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctcovid.cli import main
from ctcovid.errors import CtcovidError
from ctcovid.io import load_volume
from ctcovid.predict import Prediction, Predictor, find_scans
from ctcovid.synth.cohort import SynthCase

FORMATS = ("nifti", "dicom", "zip", "npy")


@pytest.mark.parametrize("depth_mode", ["uniformize", "stack"])
def test_dicom_nifti_zip_and_array_give_the_same_answer(
    make_ckpt, scan_files: dict[str, Path], depth_mode: str
) -> None:
    # All four carry the same HU voxels and geometry, so the answer must agree to float rounding.
    predictor = Predictor.from_checkpoint(make_ckpt(depth_mode, body_crop=True))
    preds = {fmt: predictor.predict_path(scan_files[fmt]) for fmt in FORMATS}
    ref = preds["nifti"]
    assert ref.ok and ref.label in predictor.labels
    for fmt, p in preds.items():
        assert p.label == ref.label, fmt
        np.testing.assert_allclose(list(p.probs.values()), list(ref.probs.values()), atol=1e-5, err_msg=fmt)
        assert len(p.chunks) == len(ref.chunks), fmt


def test_png_slice_folder_agrees_within_8_bit_quantisation(make_ckpt, scan_files: dict[str, Path]) -> None:
    """PNG slices hold display values (0..255 in the lung window) and no geometry.

    Written in the model's own window they match the HU input to 1/255 per voxel, which is a
    fair comparison only where geometry does not matter: without the body crop (its margin is in
    mm and its threshold differs between HU and display units). There the probabilities must
    agree closely; with the crop, different inputs are expected and only checked to run.
    """
    predictor = Predictor.from_checkpoint(make_ckpt("uniformize", body_crop=False))
    png, nii = predictor.predict_path(scan_files["png"]), predictor.predict_path(scan_files["nifti"])
    assert png.label == nii.label
    np.testing.assert_allclose(list(png.probs.values()), list(nii.probs.values()), atol=0.02)
    cropped = Predictor.from_checkpoint(make_ckpt("uniformize", body_crop=True)).predict_path(
        scan_files["png"]
    )
    assert cropped.ok and abs(sum(cropped.probs.values()) - 1) < 1e-6


def test_depth_n_scan_probabilities_are_the_mean_of_its_chunks(make_ckpt, case: SynthCase) -> None:
    predictor = Predictor.from_checkpoint(make_ckpt("stack"))
    pred = predictor.predict(case.volume, "s1")
    assert len(pred.chunks) == 5  # 20 slices in chunks of 4
    assert [(c.start, c.stop) for c in pred.chunks] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]
    chunk_probs = np.array([list(c.probs.values()) for c in pred.chunks])
    np.testing.assert_allclose(chunk_probs.mean(axis=0), list(pred.probs.values()), atol=1e-9)
    assert pred.label == max(pred.probs, key=pred.probs.__getitem__)


def test_batching_across_scans_gives_the_same_numbers_as_one_by_one(make_ckpt, scan_files, tmp_path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        (folder / name).write_bytes(scan_files["nifti"].read_bytes())
    ckpt = make_ckpt("stack")
    batched = Predictor.from_checkpoint(ckpt, batch_size=3).predict_paths([folder])
    single = Predictor.from_checkpoint(ckpt, batch_size=1).predict(load_volume(scan_files["nifti"]))
    assert [p.scan_id for p in batched] == ["a", "b", "c"]
    for p in batched:
        np.testing.assert_allclose(list(p.probs.values()), list(single.probs.values()), atol=1e-5)
        assert len(p.chunks) == 5 and "inference" in p.timings_s


@settings(max_examples=12, deadline=None)
@given(
    depths=st.lists(st.integers(4, 14), min_size=2, max_size=5),
    batch_size=st.integers(1, 4),
    mode=st.sampled_from(["keep", "stack"]),
)
def test_batch_prediction_of_scans_of_different_depths_equals_predicting_each_alone(
    make_ckpt, tmp_path_factory, depths: list[int], batch_size: int, mode: str
) -> None:
    """Regression (issue 18.2): with depth_mode='keep' scans of 20 and 26 slices were stacked into
    one batch, and every scan of it failed with "all input arrays must have the same shape"."""
    folder = tmp_path_factory.mktemp("depths")
    rng = np.random.default_rng(len(depths) * 31 + batch_size)
    for i, d in enumerate(depths):
        vol = rng.normal(-600, 300, (d, 32, 32)).astype(np.float32)
        np.save(folder / f"s{i}.npy", vol)
    predictor = Predictor.from_checkpoint(make_ckpt(mode, body_crop=False), batch_size=batch_size)
    batched = predictor.predict_paths([folder])
    assert [p.scan_id for p in batched] == [f"s{i}" for i in range(len(depths))]
    for i, p in enumerate(batched):
        assert p.ok, p.error
        alone = predictor.predict(load_volume(folder / f"s{i}.npy"), f"s{i}")
        np.testing.assert_allclose(list(p.probs.values()), list(alone.probs.values()), atol=1e-5)


def test_a_failing_scan_is_reported_and_the_others_go_on(make_ckpt, scan_files, tmp_path) -> None:
    folder = tmp_path / "cohort"
    (folder / "p1").mkdir(parents=True)
    (folder / "p1" / "good.nii.gz").write_bytes(scan_files["nifti"].read_bytes())
    (folder / "p1" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (folder / "labels.csv").write_text("scan,label\n")
    seen: list[tuple[int, int]] = []
    preds = Predictor.from_checkpoint(make_ckpt()).predict_paths(
        [folder, tmp_path / "missing"], progress=lambda d, t: seen.append((d, t))
    )
    by_id = {p.scan_id: p for p in preds}
    assert set(by_id) == {"p1/broken", "p1/good", "missing"}
    assert by_id["p1/good"].ok
    assert not by_id["p1/broken"].ok and "broken.nii.gz" in (by_id["p1/broken"].error or "")
    assert "no such file or folder" in (by_id["missing"].error or "")
    assert by_id["p1/broken"].label is None and seen[-1] == (3, 3)


def test_find_scans_tells_one_scan_from_a_folder_of_scans(
    scan_files: dict[str, Path], tmp_path: Path
) -> None:
    assert find_scans(scan_files["dicom"]) == [("dicom", scan_files["dicom"])]
    assert find_scans(scan_files["png"]) == [("png", scan_files["png"])]
    assert find_scans(scan_files["nifti"]) == [("scan", scan_files["nifti"])]
    scans = find_scans(scan_files["dicom"].parent)
    ids = [sid for sid, _ in scans]
    assert {"dicom", "dicom.zip", "png", "scan.nii.gz", "scan.npz"} <= set(ids)  # clashing ids keep suffixes
    with pytest.raises(CtcovidError, match="empty"):
        find_scans(tmp_path)


def test_severity_model_reports_the_severity_group(make_ckpt, case: SynthCase) -> None:
    pred = Predictor.from_checkpoint(make_ckpt(task="severity")).predict(case.volume)
    assert pred.task == "severity" and pred.severity == pred.label in ("low", "medium", "high")
    assert pred.to_dict()["severity"] == pred.label


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_without_cuda_is_a_clear_error(make_ckpt) -> None:
    with pytest.raises(CtcovidError, match="CUDA is not available"):
        Predictor.from_checkpoint(make_ckpt(), device="cuda")


def test_failure_prediction_serialises(tmp_path: Path) -> None:
    p = Prediction.failure("x", ValueError("bad"), task="diagnosis", path=tmp_path)
    assert p.to_dict()["error"] == "ValueError: bad" and not p.ok


def test_predict_cli_writes_csv_and_json_and_flags_failures(make_ckpt, scan_files, tmp_path, capsys) -> None:
    ckpt = str(make_ckpt())
    out_csv = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                str(scan_files["nifti"]),
                str(scan_files["zip"]),
                "--checkpoint",
                ckpt,
                "--csv",
                str(out_csv),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["scan_id"] for r in rows] == ["scan", "dicom"]
    assert rows[0]["label"] == rows[1]["label"] and rows[0]["error"] == ""
    assert abs(sum(float(rows[0][f"p_{lab}"]) for lab in ("NCP", "CP", "Normal")) - 1) < 1e-4
    out_json = tmp_path / "p.json"
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"nope")
    assert (
        main(["predict", str(scan_files["nifti"]), str(bad), "--checkpoint", ckpt, "--json", str(out_json)])
        == 1
    )
    doc = json.loads(out_json.read_text())
    assert doc["model"]["labels"] == ["NCP", "CP", "Normal"]
    assert doc["predictions"][1]["error"] and doc["predictions"][0]["probs"]
    assert "ERROR" in capsys.readouterr().out
