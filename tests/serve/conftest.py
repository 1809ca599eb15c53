"""Fixtures for the HTTP API: a tiny checkpoint, scan uploads, hostile zips, a real uvicorn server."""

from __future__ import annotations

import io
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ctcovid.checkpoint import make_checkpoint, save_checkpoint
from ctcovid.io import write_dicom_series, write_nifti
from ctcovid.models import create_model
from ctcovid.preprocess import PreprocessConfig
from ctcovid.synth.cohort import synth_case


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("r3d_10", num_classes=3)
    with torch.no_grad():
        model.fc.weight.mul_(30.0)
    pre = PreprocessConfig(depth=8, size_hw=(32, 32))
    c = make_checkpoint(model, name="r3d_10", kwargs={"num_classes": 3}, labels=["NCP", "CP", "Normal"],
                        task="diagnosis", preprocess=pre.to_dict())  # fmt: skip
    return save_checkpoint(c, tmp_path_factory.mktemp("srv-ckpt") / "model.pt")


@pytest.fixture(scope="session")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid and hostile upload bodies (file contents)."""
    root = tmp_path_factory.mktemp("uploads")
    vol = synth_case("NCP", rng=np.random.default_rng(2), shape=(16, 48, 48), severity_score=3).volume
    write_nifti(vol, root / "scan.nii.gz")
    write_dicom_series(vol, root / "dicom")
    out = {"nifti": (root / "scan.nii.gz").read_bytes()}
    out["zip"] = _zip([(f"series/{f.name}", f.read_bytes()) for f in sorted((root / "dicom").iterdir())])
    out["zip_slip"] = _zip([("../../evil.dcm", b"x" * 10), ("ok.dcm", b"y")])
    out["zip_absolute"] = _zip([("/etc/evil.dcm", b"x")])
    out["zip_bomb"] = _zip([("bomb.dcm", bytes(64 << 20))])  # 64 MiB of zeros, ~64 KiB zipped
    out["zip_many"] = _zip([(f"{i}.dcm", b"") for i in range(300)])
    link = zipfile.ZipInfo("link.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    out["zip_symlink"] = _zip([(link, b"/etc/passwd")])
    out["corrupt_nifti"] = out["nifti"][:300]
    out["nifti_bomb"] = _nifti_bomb()
    out["garbage"] = b"this is not a scan" * 10
    return out


def _nifti_bomb() -> bytes:
    """A valid gzipped NIfTI-1 header promising 4096^3 int16 voxels (128 GiB), with no data."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((4096, 4096, 4096))
    return gzip.compress(hdr.binaryblock + b"\0" * 4 + bytes(1024))


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="session")
def encode() -> Callable[..., tuple[bytes, str]]:
    """``encode(data, field="file") -> (body, content_type)`` of a multipart upload."""
    return multipart


def multipart(data: bytes, *, field: str = "file", filename: str = "scan.bin") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part, and its content type."""
    boundary = "ctcovid-test-boundary-7f3a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a socket bound to port 0) in a thread."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture()
def live_server() -> Iterator[Callable[[object], LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: object) -> LiveServer:
        s = LiveServer(app).__enter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.__exit__()
