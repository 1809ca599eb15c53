"""The API behind a real uvicorn on 127.0.0.1: concurrency, the queue limit, hostile uploads."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ctcovid.predict import Predictor

pytest.importorskip("fastapi", reason="the API needs the serve extra: pip install 'ctcovid[serve]'")

from ctcovid.serve import ServeSettings, create_app


def _post(port: int, body: bytes, ctype: str, *, path: str = "/v1/predict", chunked: bool = False,
          timeout: float = 60) -> tuple[int | None, Any]:  # fmt: skip
    """POST and return (status, json); (None, reason) when the server cut the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": ctype}
        if chunked:
            conn.putrequest("POST", path)
            for k, v in {**headers, "Transfer-Encoding": "chunked"}.items():
                conn.putheader(k, v)
            conn.endheaders()
            for i in range(0, len(body), 1 << 16):
                part = body[i : i + (1 << 16)]
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except (ConnectionError, http.client.HTTPException) as e:
        return None, type(e).__name__
    finally:
        conn.close()


def _get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture()
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTCOVID_API_TOKEN", raising=False)


def test_twenty_concurrent_requests_and_hostile_uploads(
    no_token, ckpt: Path, uploads, encode, live_server, tmp_path
) -> None:
    tmp_dir = tmp_path / "srv"
    settings = ServeSettings(tmp_dir=str(tmp_dir), max_concurrent=2, max_queue=32, max_upload_bytes=4 << 20,
                             max_unpacked_bytes=8 << 20, max_zip_entries=100)  # fmt: skip
    server = live_server(create_app(ckpt, settings))
    bodies = [encode(uploads["nifti" if i % 2 else "zip"]) for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda b: _post(server.port, *b), bodies))
    assert [status for status, _ in answers] == [200] * 20, answers[:3]
    probs = {json.dumps(ans["probs"], sort_keys=True) for _, ans in answers}
    labels = {ans["label"] for _, ans in answers}
    assert len(labels) == 1 and len(probs) <= 2  # NIfTI and DICOM agree (to float rounding)

    hostile = {
        "zip_slip": encode(uploads["zip_slip"]),
        "zip_bomb": encode(uploads["zip_bomb"]),
        "nifti_bomb": encode(uploads["nifti_bomb"]),
        "zip_symlink": encode(uploads["zip_symlink"]),
        "garbage": encode(uploads["garbage"]),
        "malformed": (b"--b\r\nnot a part", "multipart/form-data; boundary=b"),
    }
    for name, (body, ctype) in hostile.items():
        status, ans = _post(server.port, body, ctype)
        assert status in (400, 422), (name, status, ans)
    big, ctype = encode(bytes(6 << 20))
    for chunked in (False, True):  # by Content-Length, and only by counting the stream
        status, ans = _post(server.port, big, ctype, chunked=chunked)
        assert status in (413, None), (chunked, status, ans)  # None: cut off mid-send, also a refusal
    assert _get(server.port, "/v1/health")[0] == 200
    assert _post(server.port, *encode(uploads["nifti"]))[0] == 200  # still answering
    deadline = time.monotonic() + 10
    while list(tmp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # a cut-off request's cleanup may finish just after its answer
    assert list(tmp_dir.iterdir()) == []


def test_a_full_queue_answers_503_and_the_server_recovers(
    no_token, ckpt: Path, uploads, encode, live_server, tmp_path
) -> None:
    predictor = Predictor.from_checkpoint(ckpt)
    release = threading.Event()
    real = predictor.predict_path

    def slow_predict(*args: Any, **kw: Any) -> Any:
        release.wait(30)
        return real(*args, **kw)

    predictor.predict_path = slow_predict  # type: ignore[method-assign]
    settings = ServeSettings(tmp_dir=str(tmp_path / "srv"), max_concurrent=1, max_queue=1)
    server = live_server(create_app(predictor, settings))
    body = encode(uploads["nifti"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(_post, server.port, *body) for _ in range(2)]
        deadline = time.monotonic() + 20
        while _get(server.port, "/v1/health")[1]["in_flight"] < 2:
            assert time.monotonic() < deadline, "requests were not admitted"
            time.sleep(0.02)
        rejected = [_post(server.port, *body) for _ in range(2)]
        assert [s for s, _ in rejected] == [503, 503]
        assert "busy" in rejected[0][1]["detail"]
        release.set()
        assert [f.result()[0] for f in held] == [200, 200]
    assert _post(server.port, *body)[0] == 200
