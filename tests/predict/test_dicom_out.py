"""DICOM results: every object written is read back with pydicom and checked field by field, and
validated with dciodvfy (dicom3tools) where it is installed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

import ctcovid
from ctcovid.cli import main
from ctcovid.errors import MissingExtraError
from ctcovid.io import load_volume
from ctcovid.predict import Predictor, explain, open_scan
from ctcovid.predict.dicom_out import (
    CODING_SCHEME,
    RESEARCH_NOTE,
    NotDicomError,
    SourceSeries,
    patient_study_keywords,
    predict_to_dicom,
    slice_in_input_order,
    write_explanation,
    write_sr,
)
from ctcovid.preprocess.intensity import LUNG_WINDOW_HU
from ctcovid.types import Volume

pytest.importorskip("highdicom", reason="DICOM results need the dicom extra: pip install 'ctcovid[dicom]'")

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# --------------------------------------------------------------------------- helpers
def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` dciodvfy reports on ``path`` (skips the test without dciodvfy)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def assert_valid(path: Path) -> None:
    errors, warns = dciodvfy(path)
    assert not errors, f"dciodvfy errors on {path.name}: {errors}; warnings: {warns}"


def content_items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def items_named(sr: Dataset, code_value: str, scheme: str = CODING_SCHEME) -> list[Dataset]:
    return [
        i
        for i in content_items(sr)
        if i.ConceptNameCodeSequence[0].CodeValue == code_value
        and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == scheme
    ]


def probabilities(sr: Dataset) -> dict[str, float]:
    out = {}
    for i in content_items(sr):
        name = i.ConceptNameCodeSequence[0]
        if i.ValueType == "NUM" and name.CodingSchemeDesignator == CODING_SCHEME:
            mv = i.MeasuredValueSequence[0]
            assert mv.MeasurementUnitsCodeSequence[0].CodeValue == "1"
            assert float(mv.NumericValue) == pytest.approx(float(mv.FloatingPointValue), abs=1e-12)
            out[name.CodeMeaning.removeprefix("Probability of ")] = float(mv.FloatingPointValue)
    return out


def file_states(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        f.name: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
        for f in sorted(folder.iterdir())
    }


def read(path: Path, **kw: object) -> Dataset:
    return pydicom.dcmread(path, **kw)  # type: ignore[arg-type]


def assert_patient_and_study_copied(out: Dataset, source: Dataset) -> None:
    kws = patient_study_keywords(str(source.SOPClassUID))
    present = [k for k in kws if k in source]
    assert {"PatientID", "StudyInstanceUID"} <= set(present)
    for k in present:
        assert out[k].value == source[k].value, k


def lps_to_index(volume: Volume, lps: np.ndarray) -> np.ndarray:
    """Continuous array index (k, j, i) of LPS points ``(..., 3)``."""
    m = volume.direction @ np.diag(volume.spacing_mm)
    return (np.linalg.inv(m) @ (lps - np.asarray(volume.origin_mm)).reshape(-1, 3).T).T.reshape(lps.shape)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def predictor(make_ckpt) -> Predictor:
    return Predictor.from_checkpoint(make_ckpt())


@pytest.fixture(scope="module")
def cli_outputs(make_ckpt, scan_files, tmp_path_factory) -> dict[str, Path]:
    """``ctcovid predict --json --dicom-out`` and ``ctcovid explain --dicom-out`` on the DICOM scan."""
    root = tmp_path_factory.mktemp("dicom-out")
    ckpt = str(make_ckpt())
    before = file_states(scan_files["dicom"])
    rc = main(["predict", str(scan_files["dicom"]), "--checkpoint", ckpt, "--json", str(root / "p.json"),
               "--dicom-out", str(root / "sr")])  # fmt: skip
    assert rc == 0
    rc = main(["explain", str(scan_files["dicom"]), "--checkpoint", ckpt, "--method", "gradxinput",
               "--dicom-out", str(root / "explain")])  # fmt: skip
    assert rc == 0
    after = file_states(scan_files["dicom"])
    return {"root": root, "before": before, "after": after}  # type: ignore[dict-item]


# --------------------------------------------------------------------------- the SR
def test_sr_is_in_the_input_study_with_new_uids_and_the_json_s_probabilities(cli_outputs, scan_files) -> None:
    root = cli_outputs["root"]
    sr = read(root / "sr" / "dicom_sr.dcm")
    inputs = [read(f, stop_before_pixels=True) for f in sorted(scan_files["dicom"].iterdir())]
    first = inputs[0]
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert sr.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert sr.StudyInstanceUID == first.StudyInstanceUID
    assert sr.SeriesInstanceUID not in {first.SeriesInstanceUID, sr.StudyInstanceUID}
    assert sr.SOPInstanceUID not in {i.SOPInstanceUID for i in inputs}
    assert pydicom.uid.UID(sr.SeriesInstanceUID).is_valid and pydicom.uid.UID(sr.SOPInstanceUID).is_valid
    assert_patient_and_study_copied(sr, first)
    # Unverified research output, never a final report.
    assert (sr.VerificationFlag, sr.PreliminaryFlag, sr.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "COMPLETE",
    )
    assert "RESEARCH USE ONLY" in sr.SeriesDescription

    pred = json.loads((root / "p.json").read_text())["predictions"][0]
    assert probabilities(sr) == pred["probs"]  # exact: FloatingPointValue holds the float64
    (cls,) = items_named(sr, "CLASS")
    assert cls.ValueType == "CODE" and cls.ConceptCodeSequence[0].CodeMeaning == pred["label"]


def test_sr_names_model_checkpoint_version_and_says_it_is_research_output(
    cli_outputs, make_ckpt, predictor
) -> None:
    sr = read(cli_outputs["root"] / "sr" / "dicom_sr.dcm")
    (ruo,) = items_named(sr, "RUO")
    assert ruo.ValueType == "TEXT" and ruo.TextValue == RESEARCH_NOTE
    assert "not validated for clinical use" in ruo.TextValue
    sha = hashlib.sha256(Path(make_ckpt()).read_bytes()).hexdigest()
    (ckpt,) = items_named(sr, "CKPT")
    assert ckpt.TextValue == f"checkpoint file sha256 {sha}"
    (model,) = items_named(sr, "MODEL")
    assert model.TextValue == f"ctcovid {ctcovid.__version__}, model {predictor.model_name}"
    texts = {
        (i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue)
        for i in content_items(sr)
        if i.ValueType == "TEXT"
    }
    assert ("Algorithm Name", f"ctcovid {predictor.model_name}") in texts
    assert ("Algorithm Version", ctcovid.__version__) in texts
    assert ("Algorithm Parameters", f"checkpoint file sha256 {sha}") in texts
    assert sr.SoftwareVersions == f"ctcovid {ctcovid.__version__}"


def test_sr_references_the_input_series_and_every_input_instance(cli_outputs, scan_files) -> None:
    sr = read(cli_outputs["root"] / "sr" / "dicom_sr.dcm")
    inputs = [read(f, stop_before_pixels=True) for f in sorted(scan_files["dicom"].iterdir())]
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == inputs[0].StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == inputs[0].SeriesInstanceUID
    refs = [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence]
    assert sorted(refs) == sorted((i.SOPClassUID, i.SOPInstanceUID) for i in inputs)  # each once
    (uidref,) = items_named(sr, "112002", "DCM")
    assert uidref.ValueType == "UIDREF" and inputs[0].SeriesInstanceUID == uidref.UID


def test_sr_passes_dciodvfy(cli_outputs) -> None:
    assert_valid(cli_outputs["root"] / "sr" / "dicom_sr.dcm")
    assert_valid(cli_outputs["root"] / "explain" / "dicom_sr.dcm")


def test_sr_carries_quality_uncertainty_and_referral(predictor, scan_files, tmp_path) -> None:
    with open_scan(scan_files["dicom"]) as volume:
        pred = predictor.predict(volume, "q")
        pred.warnings.append("uneven slice spacing: 1.9..2.1 mm")
        pred.refer, pred.refer_reasons = True, ["uncertain: 0.70 > 0.60 (normalised entropy)"]
        sr = read(write_sr(pred, predictor, volume, tmp_path))
    (quality,) = items_named(sr, "QUALITY")
    assert json.loads(quality.TextValue) == {"ok": pred.quality["ok"], "problems": pred.quality["problems"]}
    assert json.loads(items_named(sr, "UNCERTAINTY")[0].TextValue) == pred.uncertainty
    assert items_named(sr, "REFER")[0].TextValue == "true"
    assert json.loads(items_named(sr, "REFER_REASONS")[0].TextValue) == pred.refer_reasons
    assert "uneven slice spacing: 1.9..2.1 mm" in [i.TextValue for i in items_named(sr, "WARNING")]


def test_zipped_series_gets_its_report_in_its_study(predictor, scan_files, tmp_path) -> None:
    (result,) = predict_to_dicom(predictor, [scan_files["zip"]], tmp_path)
    assert result.error is None and result.prediction.ok
    sr = read(result.files[0])
    first = read(next(scan_files["dicom"].iterdir()), stop_before_pixels=True)
    assert sr.StudyInstanceUID == first.StudyInstanceUID
    assert_patient_and_study_copied(sr, first)


# --------------------------------------------------------------------------- the heatmap series
def test_heatmap_series_lines_up_with_the_input_slice_by_slice(cli_outputs, scan_files) -> None:
    files = sorted((cli_outputs["root"] / "explain" / "dicom_heatmap").iterdir())
    by_uid = {}
    for f in scan_files["dicom"].iterdir():
        h = read(f, stop_before_pixels=True)
        by_uid[h.SOPInstanceUID] = h
    assert len(files) == len(by_uid)
    out = [read(f) for f in files]
    assert len({o.SeriesInstanceUID for o in out}) == 1 and len({o.SOPInstanceUID for o in out}) == len(out)
    some_input = next(iter(by_uid.values()))
    assert out[0].SeriesInstanceUID != some_input.SeriesInstanceUID
    positions = []
    for k, o in enumerate(out):
        (src,) = o.SourceImageSequence
        h = by_uid[src.ReferencedSOPInstanceUID]
        assert src.ReferencedSOPClassUID == h.SOPClassUID
        assert o.SOPClassUID == SECONDARY_CAPTURE and o.InstanceNumber == k + 1
        assert o.StudyInstanceUID == h.StudyInstanceUID and o.FrameOfReferenceUID == h.FrameOfReferenceUID
        assert [float(v) for v in o.ImagePositionPatient] == [float(v) for v in h.ImagePositionPatient]
        assert [float(v) for v in o.ImageOrientationPatient] == [float(v) for v in h.ImageOrientationPatient]
        assert [float(v) for v in o.PixelSpacing] == [float(v) for v in h.PixelSpacing]
        assert float(o.SliceThickness) == float(h.SliceThickness)
        assert (o.Rows, o.Columns, o.SamplesPerPixel, o.PhotometricInterpretation) == (
            h.Rows,
            h.Columns,
            3,
            "RGB",
        )
        assert_patient_and_study_copied(o, h)
        assert "RESEARCH USE ONLY" in o.SeriesDescription and "research software" in o.ImageComments
        positions.append(float(h.ImagePositionPatient[2]))
    assert positions == sorted(positions)  # written in the volume's slice order (inferior first)


def test_heatmap_pixels_show_the_input_slice_and_the_heat_where_it_is(
    predictor, scan_files, tmp_path
) -> None:
    """Each pixel is computed here from the input file's own pixels and the heat found at that
    pixel's patient position (through the geometry, not the writer's own mapping)."""
    with open_scan(scan_files["dicom"]) as volume:
        e = explain(predictor, volume, method="gradxinput")
        series, _ = write_explanation(e, predictor, tmp_path)
    assert (e.heat > 0.3).any()
    level, width = LUNG_WINDOW_HU
    n_hot = 0
    for f in series:
        o = read(f)
        (src,) = o.SourceImageSequence
        h = next(
            read(p)
            for p in scan_files["dicom"].iterdir()
            if read(p, stop_before_pixels=True).SOPInstanceUID == src.ReferencedSOPInstanceUID
        )
        hu = h.pixel_array * float(h.RescaleSlope) + float(h.RescaleIntercept)
        gray = np.rint(np.clip((hu - (level - width / 2)) / width, 0, 1) * 255)
        ipp = np.array([float(v) for v in o.ImagePositionPatient])
        iop = np.array([float(v) for v in o.ImageOrientationPatient])
        dr, dc = (float(v) for v in o.PixelSpacing)
        i, j = np.mgrid[0 : o.Rows, 0 : o.Columns]
        lps = ipp + i[..., None] * dr * iop[3:] + j[..., None] * dc * iop[:3]
        idx = np.rint(lps_to_index(volume, lps)).astype(int)
        heat = e.heat[idx[..., 0], idx[..., 1], idx[..., 2]]
        rgb = o.pixel_array.astype(int)
        cold, hot = heat == 0, heat > 0.3
        assert np.abs(rgb[cold] - gray[cold][:, None]).max(initial=0) <= 1
        spread = rgb.max(axis=-1) - rgb.min(axis=-1)
        assert (spread[hot] > 10).all()
        n_hot += int(hot.sum())
    assert n_hot > 0


@pytest.mark.parametrize(
    "flip_rows, flip_cols, transpose", [(False, True, False), (True, False, True), (True, True, True)]
)
def test_slices_follow_the_input_file_order_whatever_the_volume_s_axes(
    scan_files, flip_rows: bool, flip_cols: bool, transpose: bool
) -> None:
    v = load_volume(scan_files["dicom"])
    source = SourceSeries.from_volume(v)
    # The same scan held another way: in-plane axes flipped and/or swapped, geometry to match.
    vox, direction, spacing = v.voxels, v.direction.copy(), list(v.spacing_mm)
    corner = [0, 0, 0]
    if flip_rows:
        vox, direction[:, 1], corner[1] = vox[:, ::-1], -direction[:, 1], v.shape[1] - 1
    if flip_cols:
        vox, direction[:, 2], corner[2] = vox[:, :, ::-1], -direction[:, 2], v.shape[2] - 1
    origin = tuple(v.index_to_lps(tuple(corner)))  # type: ignore[arg-type]
    if transpose:
        vox, direction = vox.transpose(0, 2, 1), direction[:, [0, 2, 1]]
        spacing = [spacing[0], spacing[2], spacing[1]]
    other = Volume(
        np.ascontiguousarray(vox), spacing_mm=tuple(spacing), origin_mm=origin, direction=direction
    )  # type: ignore[arg-type]
    for k, h in enumerate(source.headers):
        np.testing.assert_array_equal(
            slice_in_input_order(other, k, h), read(source.files[k]).pixel_array - 1024.0
        )
        np.testing.assert_array_equal(slice_in_input_order(v, k, h), v.voxels[k])


def test_heatmap_series_passes_dciodvfy(cli_outputs) -> None:
    files = sorted((cli_outputs["root"] / "explain" / "dicom_heatmap").iterdir())
    for f in files:
        assert_valid(f)


def test_jpeg2000_heatmap_series_holds_the_same_pixels_and_passes_dciodvfy(
    predictor, scan_files, tmp_path
) -> None:
    with open_scan(scan_files["dicom"]) as volume:
        e = explain(predictor, volume, method="gradxinput")
        plain, _ = write_explanation(e, predictor, tmp_path / "plain")
        small, _ = write_explanation(e, predictor, tmp_path / "j2k", transfer_syntax="jpeg2000")
    for a, b in zip(plain, small, strict=True):
        ra, rb = read(a), read(b)
        assert rb.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
        np.testing.assert_array_equal(ra.pixel_array, rb.pixel_array)  # lossless
    assert_valid(small[len(small) // 2])


# --------------------------------------------------------------------------- refusals, inputs kept
def test_input_files_are_never_modified(cli_outputs) -> None:
    assert cli_outputs["after"] == cli_outputs["before"]


@pytest.mark.parametrize("kind", ["nifti", "png", "npy"])
def test_non_dicom_input_is_refused_with_one_line(predictor, scan_files, tmp_path, kind: str) -> None:
    (result,) = predict_to_dicom(predictor, [scan_files[kind]], tmp_path / "out")
    assert result.prediction.ok and result.files == []
    assert result.error is not None and "\n" not in result.error
    assert str(scan_files[kind]) in result.error and "not a DICOM series" in result.error
    assert not (tmp_path / "out").exists()
    with open_scan(scan_files[kind]) as volume, pytest.raises(NotDicomError, match="no study or patient"):
        SourceSeries.from_volume(volume)


def test_cli_reports_the_refusal_and_still_writes_the_nifti(make_ckpt, scan_files, tmp_path, capsys) -> None:
    rc = main(["explain", str(scan_files["nifti"]), "--checkpoint", str(make_ckpt()), "--method", "gradxinput",
               "--out", str(tmp_path / "nii"), "--dicom-out", str(tmp_path / "dcm")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    (line,) = [x for x in err.splitlines() if "no DICOM written" in x]
    assert "not a DICOM series" in line
    assert (tmp_path / "nii" / "scan_heatmap.nii.gz").is_file() and not (tmp_path / "dcm").exists()


def test_missing_highdicom_names_the_extra(predictor, scan_files, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "highdicom", None)  # what an environment without it gives
    with open_scan(scan_files["dicom"]) as volume:
        pred = predictor.predict(volume, "x")
        with pytest.raises(MissingExtraError, match=r"pip install 'ctcovid\[dicom\]'"):
            write_sr(pred, predictor, volume, tmp_path)


# --------------------------------------------------------------------------- the real series
@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the input's UUID-string UIDs
def test_real_covid_ct_md_series_gets_its_report_and_heatmap(shared_data, predictor, tmp_path) -> None:
    folder = shared_data / "chest-ct-dicom-jpegls"
    before = file_states(folder)
    with open_scan(folder) as volume:
        e = explain(predictor, volume, scan_id="normal002", method="gradxinput")
        series, sr_path = write_explanation(e, predictor, tmp_path)
    assert file_states(folder) == before
    inputs = {f: read(f, stop_before_pixels=True) for f in sorted(folder.iterdir())}
    by_position = {float(h.ImagePositionPatient[2]): h for h in inputs.values()}
    first = next(iter(inputs.values()))
    assert len(series) == len(inputs) == 167
    for k, f in enumerate(series):
        o = read(f, stop_before_pixels=True)
        h = by_position[float(o.ImagePositionPatient[2])]
        assert o.ImageOrientationPatient == h.ImageOrientationPatient and o.PixelSpacing == h.PixelSpacing
        assert (o.Rows, o.Columns, o.InstanceNumber) == (512, 512, k + 1)
        assert o.StudyInstanceUID == h.StudyInstanceUID
        # The input has no FrameOfReferenceUID and no SOPInstanceUID: none are made up.
        assert "FrameOfReferenceUID" not in o and "SourceImageSequence" not in o
    sr = read(sr_path)
    assert sr.StudyInstanceUID == first.StudyInstanceUID
    assert_patient_and_study_copied(sr, first)
    assert probabilities(sr) == e.prediction.probs
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr  # no instance UID to list
    assert "167 of 167 input slices have no SOP Instance UID" in items_named(sr, "NOREF")[0].TextValue
    assert first.SeriesInstanceUID == items_named(sr, "112002", "DCM")[0].UID

    # dciodvfy: our files carry no error of their own; only the input's non-conformant UIDs,
    # copied as they are, are reported (the input itself fails on them).
    input_errors, _ = dciodvfy(next(iter(inputs)))
    inherited = {str(first.StudyInstanceUID), str(first.SeriesInstanceUID)}
    for f in [sr_path, *series[::40]]:
        errors, warns = dciodvfy(f)
        own = [x for x in errors if x not in input_errors and not any(u in x for u in inherited)]
        assert not own, f"dciodvfy errors on {f.name} not inherited from the input: {own}; warnings: {warns}"
