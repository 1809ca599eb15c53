"""Receiving a scan over HTTP: a streaming multipart parser with a size limit, and content sniffing.

Starlette's own form parsing reads the whole body and spools files into the system temp folder
before a route runs; here the body is parsed as it arrives (python-multipart's streaming parser),
the ``file`` part goes straight into a file with a server-chosen name inside the request's private
folder, and the request is refused with 413 as soon as the body passes the limit (or at once when
``Content-Length`` announces more). The client's file name is never used: the stored name comes
from the content (zip, gzip = NIfTI, raw NIfTI header).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

FIELD = "file"
_PART_NAME = "upload.part"


class UploadError(Exception):
    """A refused upload: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _PartState:
    headers: dict[bytes, bytes]
    field: bytes = b""
    value: bytes = b""
    sink: IO[bytes] | None = None


def sniff_kind(head: bytes) -> str | None:
    """``"zip"``, ``"nii.gz"`` or ``"nii"`` from a file's first bytes; None when none of them."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "nii.gz"
    if len(head) >= 4:
        for order in ("little", "big"):
            if int.from_bytes(head[:4], order) in (348, 540):  # NIfTI-1 / NIfTI-2 header sizes
                return "nii"
    return None


async def receive_upload(request: Request, folder: Path, max_bytes: int) -> Path:
    """Stream the multipart field ``file`` of ``request`` into ``folder``; return the stored file.

    Raises:
        UploadError: 413 (too large), 415 (not multipart), 400 (malformed body or client gone),
            422 (no ``file`` field, empty, or not NIfTI / zip).
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(415, "send the scan as multipart/form-data with a 'file' field")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, f"upload of {int(declared)} bytes exceeds the limit of {max_bytes} bytes")

    target = folder / _PART_NAME
    state = _PartState(headers={})
    found = {"file": False, "bytes": 0}
    head = bytearray()

    def on_part_begin() -> None:
        state.headers, state.field, state.value, state.sink = {}, b"", b"", None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.field.lower()] = state.value
        state.field, state.value = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state.headers.get(b"content-disposition", b""))
        if disp.get(b"name") == FIELD.encode() and not found["file"]:
            found["file"] = True
            state.sink = target.open("xb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.sink is not None:
            chunk = data[start:end]
            if len(head) < 16:
                head.extend(chunk[: 16 - len(head)])
            state.sink.write(chunk)
            found["bytes"] += end - start

    def on_part_end() -> None:
        if state.sink is not None:
            state.sink.close()
            state.sink = None

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise UploadError(413, f"upload exceeds the limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise UploadError(400, f"malformed multipart body ({e})") from e
    except ClientDisconnect as e:
        raise UploadError(400, "the client disconnected during the upload") from e
    finally:
        if state.sink is not None:
            state.sink.close()
    if not found["file"]:
        raise UploadError(422, f"no '{FIELD}' field in the form; attach the scan as '{FIELD}'")
    if found["bytes"] == 0:
        raise UploadError(422, "the uploaded file is empty")
    kind = sniff_kind(bytes(head))
    if kind is None:
        raise UploadError(
            422, "unsupported file: upload a NIfTI scan (.nii, .nii.gz) or a .zip of one DICOM series"
        )
    stored = folder / f"scan.{kind}"
    os.replace(target, stored)
    return stored


def check_unpacked_size(path: Path, max_bytes: int) -> None:
    """Refuse a NIfTI whose header promises more voxel data than ``max_bytes`` (a gzip bomb).

    Only the header is read (348 or 540 bytes, decompressed), so a 1 GiB upload of zeros cannot
    make the reader allocate a terabyte. Zips are bounded while they are unpacked instead.

    Raises:
        UploadError: 422 when the promised data is too large or the header is unreadable.
    """
    if not path.name.startswith("scan.nii"):
        return
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        raise UploadError(422, f"the NIfTI file cannot be decompressed ({e})") from e
    for order in ("<", ">"):
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            break
    else:
        raise UploadError(422, "not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    n_dims = min(max(int(dims[0]), 0), 7)
    voxels = 1
    for d in dims[1 : 1 + n_dims]:
        voxels *= max(int(d), 1)
    promised = voxels * max(int(bitpix), 8) // 8
    if promised > max_bytes:
        raise UploadError(
            422, f"the NIfTI header promises {promised} bytes of voxels, more than the limit of {max_bytes}"
        )
