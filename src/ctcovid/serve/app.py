"""The HTTP API: ``create_app(checkpoint, settings)`` builds a FastAPI app around a :class:`Predictor`.

Routes: ``POST /v1/predict`` and ``POST /v1/explain`` (multipart field ``file``: ``.nii``,
``.nii.gz`` or a ``.zip`` of one DICOM series), ``GET /v1/health``, ``GET /v1/model``, the
OpenAPI docs (``/docs``, ``/openapi.json``) and an upload page at ``/``. For a zipped DICOM
series, ``/v1/predict?format=dicom-sr`` answers with a DICOM Structured Report and
``/v1/explain?format=dicom`` with a zip of the heatmap series and the SR (in the upload's study;
see :mod:`ctcovid.predict.dicom_out`); a NIfTI upload gets a 422 saying why.

Hardening, in the order a request meets it:

1. bearer token (``settings.api_token`` or env ``CTCOVID_API_TOKEN``): 401 without it, except for
   ``/``, ``/v1/health`` and the docs;
2. admission: at most ``max_concurrent + max_queue`` requests in flight, 503 beyond;
3. the upload is streamed into a private, server-named folder (``settings.tmp_dir``) with a size
   limit (413 while streaming, see :mod:`.upload`); no client path or name touches the disk;
4. zips are unpacked with entry-count and size limits, refusing unsafe names and links, and a
   NIfTI's header may not promise more voxel data than the same size limit (422);
5. inference runs in the thread pool behind an ``asyncio.Semaphore(max_concurrent)``;
6. an unreadable scan is a 422 with the reader's reason; the request folder is always removed.

The model is loaded from a local checkpoint only; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ctcovid.errors import CtcovidError, MissingExtraError, ScanReadError

try:
    from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(e.name or "fastapi", "serve") from e

from ctcovid.predict.explain import BASELINES, CAM_METHODS, RESTRICTIONS, NotAssessableError, explain
from ctcovid.predict.inputs import ZipLimits, open_scan
from ctcovid.predict.predictor import Predictor
from ctcovid.serve.page import PAGE
from ctcovid.serve.upload import FIELD, UploadError, check_unpacked_size, receive_upload

log = logging.getLogger(__name__)
T = TypeVar("T")
TOKEN_ENV = "CTCOVID_API_TOKEN"
_MIB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the server (all have safe defaults)."""

    max_upload_bytes: int = 1024 * _MIB
    max_zip_entries: int = 5000
    max_unpacked_bytes: int = 4096 * _MIB  # a zip's content, or a NIfTI's voxel data
    max_concurrent: int = 1  # inferences at once (each already uses every core)
    max_queue: int = 8  # requests waiting beyond those; more get 503
    tmp_dir: str | None = None  # where request folders go (default: the system temp folder)
    api_token: str | None = None  # None: read env CTCOVID_API_TOKEN; "" disables
    device: str = "cpu"
    batch_size: int = 4
    montage_slices: int = 6

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_zip_entries",
            "max_unpacked_bytes",
            "max_concurrent",
            "batch_size",
        ):
            if int(getattr(self, name)) < 1:
                raise CtcovidError(f"serve setting {name}={getattr(self, name)!r} must be >= 1")
        if self.max_queue < 0:
            raise CtcovidError(f"serve setting max_queue={self.max_queue!r} must be >= 0")

    def token(self) -> str | None:
        value = self.api_token if self.api_token is not None else os.environ.get(TOKEN_ENV)
        return value or None


class _Gate:
    """Admission (a bounded count of requests in flight) and a semaphore for inference."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.capacity = max_concurrent, max_concurrent + max_queue
        self.admitted = 0
        self.running = 0
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:  # a new event loop (tests) gets its own
            self._sem, self._loop = asyncio.Semaphore(self.max_concurrent), loop
        return self._sem

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.capacity:
            raise HTTPException(503, "the server is busy; retry shortly", headers={"Retry-After": "5"})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn: Callable[[], T]) -> T:
        async with self._semaphore():
            self.running += 1
            try:
                return await run_in_threadpool(fn)
            finally:
                self.running -= 1


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "a NIfTI scan (.nii, .nii.gz) or a .zip of one DICOM series",
                        }
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token"},
    413: {"description": "upload larger than the server's limit"},
    415: {"description": "not a multipart/form-data request"},
    422: {"description": "the scan cannot be read (reason in 'detail')"},
    503: {"description": "too many requests in flight; retry later"},
}


def create_app(checkpoint: str | Path | Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The API for one model: a checkpoint file or run folder, or a ready :class:`Predictor`."""
    settings = settings or ServeSettings()
    predictor = (
        checkpoint
        if isinstance(checkpoint, Predictor)
        else Predictor.from_checkpoint(checkpoint, device=settings.device, batch_size=settings.batch_size)
    )
    token = settings.token()
    gate = _Gate(settings.max_concurrent, settings.max_queue)
    limits = ZipLimits(max_entries=settings.max_zip_entries, max_total_bytes=settings.max_unpacked_bytes)
    if settings.tmp_dir is not None:
        Path(settings.tmp_dir).mkdir(parents=True, exist_ok=True)

    app = FastAPI(
        title="ctcovid",
        description="COVID-19 diagnosis / severity from chest CT with 3D CNNs (research use only).",
        version=_version(),
    )
    app.state.predictor, app.state.settings, app.state.gate = predictor, settings, gate

    def require_token(authorization: str | None = Header(None)) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def handle(request: Request, job: Callable[[Path, Path], T]) -> T:
        async with gate.admit():
            work = Path(tempfile.mkdtemp(prefix="ctcovid-req-", dir=settings.tmp_dir))
            try:
                scan = await receive_upload(request, work, settings.max_upload_bytes)
                check_unpacked_size(scan, settings.max_unpacked_bytes)
                return await gate.run(lambda: job(scan, work))
            except UploadError as e:
                raise HTTPException(e.status, e.message) from e
            except MissingExtraError as e:  # the server lacks an optional part: not the client's fault
                raise HTTPException(501, str(e)) from e
            except ScanReadError as e:
                # The reason and hint only (the message names the server's file), and no temp path.
                detail = e.reason + (f" ({e.hint})" if e.hint else "")
                raise HTTPException(422, detail.replace(str(work), "<upload>")) from e
            except CtcovidError as e:
                raise HTTPException(422, str(e).replace(str(work), "<upload>")) from e
            finally:
                shutil.rmtree(work, ignore_errors=True)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        """Liveness and load: requests in flight and capacity (no token needed)."""
        return {
            "status": "ok",
            "model": predictor.model_name,
            "running": gate.running,
            "in_flight": gate.admitted,
            "capacity": gate.capacity,
        }

    @app.get("/v1/model", dependencies=[Depends(require_token)], responses=_ERRORS)
    async def model() -> dict[str, Any]:
        """Model name, task, labels, input shape and the preprocessing it was trained with."""
        return predictor.info()

    @app.post(
        "/v1/predict", dependencies=[Depends(require_token)], openapi_extra=_UPLOAD_BODY, responses=_ERRORS
    )
    async def predict(
        request: Request,
        format: str = Query(
            "json",
            pattern="^(json|dicom-sr)$",
            description="json, or dicom-sr: a DICOM Structured Report in the study of the uploaded "
            "DICOM series (application/dicom; a NIfTI upload gets 422)",
        ),
    ) -> Any:
        """Predicted label and class probabilities (and per-chunk detail) for one uploaded scan, as
        JSON or as a DICOM SR."""
        t0 = time.perf_counter()

        def job(scan: Path, work: Path) -> Any:
            if format == "dicom-sr":
                from ctcovid.predict.dicom_out import write_sr

                with open_scan(scan, tmp_dir=work, zip_limits=limits) as volume:
                    pred = predictor.predict(volume, "upload")
                    sr = write_sr(pred, predictor, volume, work / "report.dcm")
                headers = {
                    "X-Ctcovid-Label": str(pred.label),
                    "Content-Disposition": 'attachment; filename="report.dcm"',
                }
                return Response(sr.read_bytes(), media_type="application/dicom", headers=headers)
            pred = predictor.predict_path(scan, scan_id="upload", tmp_dir=work, zip_limits=limits)
            out = pred.to_dict()
            out.pop("path", None)
            return out

        out = await handle(request, job)
        if isinstance(out, Response):
            return out
        return {**out, "seconds": time.perf_counter() - t0}

    @app.post(
        "/v1/explain", dependencies=[Depends(require_token)], openapi_extra=_UPLOAD_BODY, responses=_ERRORS
    )
    async def explain_route(
        request: Request,
        method: str = Query(
            "ig",
            pattern="^(" + "|".join(re.escape(m) for m in CAM_METHODS) + ")$",
            description=f"one of {', '.join(CAM_METHODS)}: ig (integrated gradients at the input's "
            "resolution, the default) and gradxinput localize lesions; gradcam and gradcam++ give "
            "coarse blobs",
        ),
        target: str | None = Query(None, description="class to explain (default: the predicted one)"),
        layer: str | None = Query(
            None,
            description="gradcam and gradcam++ only: layer to hook (default: auto, a grid of at least 4x8x8)",
        ),
        restrict: str = Query(
            "lungs",
            pattern="^(" + "|".join(RESTRICTIONS) + ")$",
            description="keep the heat inside the lung field (default), the body, or anywhere (none)",
        ),
        baseline: str = Query(
            "healthy",
            pattern="^(" + "|".join(BASELINES) + ")$",
            description="ig and gradxinput only: the reference the evidence is measured against: the "
            "same scan with clear lungs (healthy, default), an all-air scan (air), or zeros",
        ),
        format: str = Query(
            "json",
            pattern="^(json|png|nifti|dicom)$",
            description="json, png (montage), nifti (heatmap) or dicom: a zip of the heatmap as a "
            "DICOM series lined up with the uploaded DICOM series, and the DICOM SR",
        ),
    ) -> Response:
        """Prediction plus a heatmap (integrated gradients by default, or Grad-CAM): JSON with a base64
        PNG montage, the PNG, the NIfTI, or a zip of DICOM files."""
        t0 = time.perf_counter()

        def job(scan: Path, work: Path) -> Response:
            with open_scan(scan, tmp_dir=work, zip_limits=limits) as volume:
                try:
                    e = explain(
                        predictor,
                        volume,
                        scan_id="upload",
                        method=method,
                        layer=layer,
                        target=target,
                        restrict=restrict,
                        baseline=baseline,
                    )
                except NotAssessableError:
                    if format != "json":
                        raise  # 422 with the reasons: there is no heatmap to send
                    # JSON: the answer "not assessable" with its reasons, and no heatmap.
                    pred = predictor.predict(volume, "upload").to_dict()
                    pred.pop("path", None)
                    return JSONResponse(
                        {"prediction": pred, "montage_png": None, "seconds": time.perf_counter() - t0}
                    )
                if format == "dicom":  # inside the with block: the input's files exist only here
                    return _dicom_zip(
                        e, work, {"X-Ctcovid-Label": str(e.prediction.label), "X-Ctcovid-Target": e.target}
                    )
            png = e.montage_png(settings.montage_slices)
            headers = {"X-Ctcovid-Label": str(e.prediction.label), "X-Ctcovid-Target": e.target}
            if format == "png":
                return Response(png, media_type="image/png", headers=headers)
            if format == "nifti":
                from ctcovid.io import write_nifti

                path = write_nifti(e.heat_volume(), work / "heatmap.nii.gz")
                headers["Content-Disposition"] = 'attachment; filename="heatmap.nii.gz"'
                return Response(path.read_bytes(), media_type="application/gzip", headers=headers)
            pred = e.prediction.to_dict()
            pred.pop("path", None)
            body = {
                **e.summary(settings.montage_slices),
                "prediction": pred,
                "montage_png": base64.b64encode(png).decode(),
                "seconds": time.perf_counter() - t0,
            }
            return JSONResponse(body)

        return await handle(request, job)

    def _dicom_zip(e: Any, work: Path, headers: dict[str, str]) -> Response:
        from ctcovid.predict.dicom_out import write_explanation

        out = work / "dicom-out"
        series, sr = write_explanation(e, predictor, out)
        archive = work / "dicom.zip"
        # Deflate level 1: the uncompressed RGB slices shrink ~3x at a fraction of the default's time.
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for f in [*series, sr]:
                zf.write(f, f.relative_to(out).as_posix())
        headers["Content-Disposition"] = 'attachment; filename="heatmap-dicom.zip"'
        return Response(archive.read_bytes(), media_type="application/zip", headers=headers)

    return app


def _version() -> str:
    from ctcovid import __version__

    return __version__
