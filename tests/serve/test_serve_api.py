from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ctcovid.predict import Predictor
from ctcovid.predict.explain import CAM_METHODS

pytest.importorskip("fastapi", reason="the API needs the serve extra: pip install 'ctcovid[serve]'")

from ctcovid.serve import ServeSettings, create_app

LIMITS = {"max_upload_bytes": 4 << 20, "max_zip_entries": 100, "max_unpacked_bytes": 8 << 20}


def _client(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette warns that it prefers httpx2 over httpx now
        from fastapi.testclient import TestClient
    return TestClient(app)


@pytest.fixture()
def tmp_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "srv"
    yield d
    assert list(d.iterdir()) == [], "request files were left behind"


@pytest.fixture()
def client(ckpt: Path, tmp_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CTCOVID_API_TOKEN", raising=False)
    return _client(create_app(ckpt, ServeSettings(tmp_dir=str(tmp_dir), **LIMITS)))


def _post(client, data: bytes, route: str = "/v1/predict", **kw):
    return client.post(route, files={"file": ("upload.bin", data)}, **kw)


def test_health_model_docs_and_page(client) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    model = client.get("/v1/model").json()
    assert model["name"] == "r3d_10" and model["labels"] == ["NCP", "CP", "Normal"]
    assert model["preprocess"]["depth"] == 8 and model["input_shape"] == [1, 8, 32, 32]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/explain", "/v1/health", "/v1/model"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    page = client.get("/").text
    assert 'id="file"' in page and "v1/explain" in page and "http" not in page.split("<script>")[1]
    # The page offers every explanation method the API accepts, the API's default preselected.
    params = {p["name"]: p for p in paths["/v1/explain"]["post"]["parameters"]}
    assert (
        params["method"]["schema"]["default"] == "ig" and params["restrict"]["schema"]["default"] == "lungs"
    )
    assert params["baseline"]["schema"]["default"] == "healthy"
    select = page.split('<select id="method">')[1].split("</select>")[0]
    assert re.findall(r'value="([^"]+)"', select) == list(CAM_METHODS)
    assert '<option value="ig" selected>' in select


def test_nifti_and_zipped_dicom_uploads_give_the_predictor_s_answer(
    client, ckpt: Path, uploads, tmp_path
) -> None:
    nii, zipped = _post(client, uploads["nifti"]), _post(client, uploads["zip"])
    assert nii.status_code == 200 and zipped.status_code == 200, (nii.text, zipped.text)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(uploads["nifti"])
    ref = Predictor.from_checkpoint(ckpt).predict_path(scan)
    for r in (nii.json(), zipped.json()):
        assert r["label"] == ref.label and "path" not in r  # no server path in the answer
        np.testing.assert_allclose(list(r["probs"].values()), list(ref.probs.values()), atol=1e-5)


def test_explain_returns_probabilities_and_a_montage(client, uploads) -> None:
    r = _post(client, uploads["nifti"], "/v1/explain?method=gradcam%2B%2B")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam++" and body["target"] == body["prediction"]["label"]
    assert base64.b64decode(body["montage_png"])[:4] == b"\x89PNG"
    default = _post(client, uploads["nifti"], "/v1/explain").json()
    assert default["method"] == "ig" and default["layer"] == "input"  # as `ctcovid explain`
    assert default["baseline"] == "healthy"
    air = _post(client, uploads["nifti"], "/v1/explain?method=gradxinput&baseline=air").json()
    assert air["method"] == "gradxinput" and air["baseline"] == "air"
    unknown = _post(client, uploads["nifti"], "/v1/explain?method=shap")
    assert unknown.status_code == 422 and "method" in unknown.text
    png = _post(client, uploads["nifti"], "/v1/explain?format=png&target=Normal")
    assert png.headers["content-type"] == "image/png" and png.headers["x-ctcovid-target"] == "Normal"
    nifti = _post(client, uploads["nifti"], "/v1/explain?format=nifti")
    assert nifti.status_code == 200 and nifti.content[:2] == b"\x1f\x8b"
    bad = _post(client, uploads["nifti"], "/v1/explain?target=Flu")
    assert bad.status_code == 422 and "unknown target class 'Flu'" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("garbage", 422, "upload a NIfTI scan"),
        ("corrupt_nifti", 422, "NIfTI"),
        ("zip_slip", 422, "unsafe zip entry '../../evil.dcm'"),
        ("zip_absolute", 422, "unsafe zip entry '/etc/evil.dcm'"),
        ("zip_symlink", 422, "is a symbolic link"),
        ("zip_bomb", 422, "more than the limit of 8388608"),
        ("zip_many", 422, "300 entries, more than the limit of 100"),
        ("nifti_bomb", 422, "promises 137438953472 bytes of voxels, more than the limit of 8388608"),
    ],
)
def test_bad_uploads_are_refused_with_a_reason(client, uploads, name: str, status: int, message: str) -> None:
    r = _post(client, uploads[name])
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert "/srv" not in r.json()["detail"]  # no server path in the answer
    assert client.get("/v1/health").status_code == 200


def test_malformed_requests(client, encode) -> None:
    assert (
        client.post(
            "/v1/predict", content=b"raw", headers={"content-type": "application/octet-stream"}
        ).status_code
        == 415
    )
    body, ctype = encode(b"data", field="other")
    r = client.post("/v1/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == 422 and "no 'file' field" in r.json()["detail"]
    body, ctype = encode(b"")
    assert (
        client.post("/v1/predict", content=body, headers={"content-type": ctype}).json()["detail"]
        == "the uploaded file is empty"
    )
    r = client.post(
        "/v1/predict",
        content=b"--nope\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code in (400, 422)


def test_oversized_uploads_get_413_by_header_and_while_streaming(client, encode) -> None:
    body, ctype = encode(bytes(5 << 20))
    assert client.post("/v1/predict", content=body, headers={"content-type": ctype}).status_code == 413
    sent = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the streaming check can stop it
        for i in range(0, len(body), 1 << 16):
            sent.append(i)
            yield body[i : i + (1 << 16)]

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": ctype})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]


def test_token_is_required_when_set(ckpt: Path, tmp_dir: Path, uploads, monkeypatch) -> None:
    monkeypatch.setenv("CTCOVID_API_TOKEN", "s3cret")
    client = _client(create_app(ckpt, ServeSettings(tmp_dir=str(tmp_dir))))
    assert _post(client, uploads["nifti"]).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert _post(client, uploads["nifti"], headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/health").status_code == 200 and client.get("/").status_code == 200


def test_serve_loads_neither_train_nor_fastapi_until_asked(ckpt: Path) -> None:
    code = (
        "import sys, ctcovid, ctcovid.serve, ctcovid.predict\n"
        "assert 'fastapi' not in sys.modules, 'fastapi imported eagerly'\n"
        f"from ctcovid.serve import create_app; create_app({str(ckpt)!r})\n"
        "bad = sorted(m for m in sys.modules if m.startswith('ctcovid.train'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- DICOM results
def _zip_headers(data: bytes) -> dict[str, object]:
    """SOPInstanceUID -> header of every DICOM file in a zip upload."""
    import pydicom

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        hs = [pydicom.dcmread(io.BytesIO(zf.read(n)), stop_before_pixels=True) for n in zf.namelist()]
    return {h.SOPInstanceUID: h for h in hs}


def _dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    f = tmp_path / "check.dcm"
    f.write_bytes(data)
    run = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
    return [x for x in (run.stdout + run.stderr).splitlines() if x.startswith("Error")]


def test_predict_dicom_sr_returns_the_report_in_the_upload_s_study(client, uploads, tmp_path) -> None:
    pytest.importorskip("highdicom", reason="needs the dicom extra: pip install 'ctcovid[dicom]'")
    import pydicom

    r = _post(client, uploads["zip"], "/v1/predict?format=dicom-sr")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(r.content))
    inputs = _zip_headers(uploads["zip"])
    first = next(iter(inputs.values()))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == first.StudyInstanceUID
    assert (sr.PatientID, sr.PatientName) == (first.PatientID, first.PatientName)
    assert sr.SeriesInstanceUID != first.SeriesInstanceUID and sr.SOPInstanceUID not in inputs
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert sorted(x.ReferencedSOPInstanceUID for x in series.ReferencedSOPSequence) == sorted(inputs)

    def walk(ds):
        for item in ds.get("ContentSequence", []):
            yield item
            yield from walk(item)

    probs = {
        i.ConceptNameCodeSequence[0].CodeMeaning.removeprefix("Probability of "): float(
            i.MeasuredValueSequence[0].FloatingPointValue
        )
        for i in walk(sr)
        if i.ValueType == "NUM"
    }
    as_json = _post(client, uploads["zip"]).json()
    assert probs == as_json["probs"] and r.headers["x-ctcovid-label"] == as_json["label"]
    assert any(i.ValueType == "TEXT" and "research software" in i.TextValue for i in walk(sr))
    assert _dciodvfy_errors(r.content, tmp_path) == []


def test_dicom_results_of_a_nifti_upload_are_refused_with_the_reason(client, uploads) -> None:
    for route in ("/v1/predict?format=dicom-sr", "/v1/explain?format=dicom&method=gradxinput"):
        r = _post(client, uploads["nifti"], route)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "not a DICOM series" in detail and "no study or patient" in detail
        assert "/srv" not in detail  # no server path in the answer
    assert _post(client, uploads["zip"], "/v1/predict?format=dicom").status_code == 422  # unknown format


def test_explain_dicom_returns_a_zip_of_the_heatmap_series_lined_up_with_the_upload(
    client, uploads, tmp_path
) -> None:
    pytest.importorskip("highdicom", reason="needs the dicom extra: pip install 'ctcovid[dicom]'")
    import pydicom

    r = _post(client, uploads["zip"], "/v1/explain?format=dicom&method=gradxinput")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    inputs = _zip_headers(uploads["zip"])
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = sorted(zf.namelist())
        files = {n: zf.read(n) for n in names}
    heat = [n for n in names if n.startswith("upload_heatmap/")]
    assert len(heat) == len(inputs) and "upload_sr.dcm" in names and len(names) == len(inputs) + 1
    series_uids = set()
    for n in heat:
        o = pydicom.dcmread(io.BytesIO(files[n]))
        h = inputs[o.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert o.ImagePositionPatient == h.ImagePositionPatient
        assert o.ImageOrientationPatient == h.ImageOrientationPatient and o.PixelSpacing == h.PixelSpacing
        assert o.FrameOfReferenceUID == h.FrameOfReferenceUID and o.StudyInstanceUID == h.StudyInstanceUID
        assert o.pixel_array.shape == (h.Rows, h.Columns, 3)
        series_uids.add(o.SeriesInstanceUID)
    (uid,) = series_uids
    sr = pydicom.dcmread(io.BytesIO(files["upload_sr.dcm"]))
    assert any(getattr(i, "TextValue", None) == uid for i in sr.ContentSequence)  # the SR names the series
    assert _dciodvfy_errors(files[heat[0]], tmp_path) == []
