"""From a scan to an answer: :class:`Predictor` wraps a checkpoint's model and its preprocessing.

>>> predictor = Predictor.from_checkpoint("runs/demo/checkpoint_best.pt")  # doctest: +SKIP
>>> predictor.predict_path("scan.nii.gz").probs  # doctest: +SKIP
{'NCP': 0.91, 'CP': 0.06, 'Normal': 0.03}

The pipeline is rebuilt from the checkpoint's ``preprocess`` dict, so a scan is seen exactly as
in training. A depth-n model (``depth_mode="stack"``) sees a scan as many chunks: each chunk gets
probabilities and the scan's are their mean, as in evaluation. :meth:`Predictor.predict_paths`
runs many scans, batching chunks across scans and reading the next scan while the network works;
a scan that fails is returned with its ``error`` and the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctcovid.checkpoint import load_checkpoint, rebuild_model
from ctcovid.errors import CtcovidError
from ctcovid.predict.batch import BatchRun
from ctcovid.predict.inputs import ZipLimits, find_scans, open_scan, scan_id_of
from ctcovid.predict.result import ChunkPrediction, Prediction, Progress, describe_error
from ctcovid.preprocess.depth import Chunk
from ctcovid.preprocess.pipeline import Pipeline, PreprocessConfig, Preprocessed, build_pipeline
from ctcovid.types import Volume

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CtcovidError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CtcovidError(f"device '{device}' requested but CUDA is not available here; use --device cpu")
    return dev


def _same_shape_batches(arrays: Sequence[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive runs of ``arrays`` with equal shapes, cut into batches of at most ``size``."""
    batch: list[np.ndarray] = []
    for a in arrays:
        if batch and (len(batch) == size or a.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(a)
    if batch:
        yield batch


class Predictor:
    """A model, its labels and its preprocessing, ready to answer for scans."""

    def __init__(
        self,
        model: nn.Module,
        *,
        labels: Sequence[str],
        preprocess: PreprocessConfig,
        task: str = "diagnosis",
        model_name: str = "",
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if getattr(model, "spatial_dims", 3) != 3:
            raise CtcovidError(
                f"model '{model_name}' takes 2D slices; predict and serve support volume (3D) models"
            )
        if batch_size < 1:
            raise CtcovidError(f"batch_size={batch_size} is invalid; expected an integer >= 1")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.labels = list(labels)
        self.task = task
        self.model_name = model_name
        self.batch_size = int(batch_size)
        self.pipeline: Pipeline = build_pipeline(preprocess)
        self.meta = dict(meta or {})

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | dict[str, Any],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
    ) -> Predictor:
        """Rebuild model, labels and preprocessing from a checkpoint file, run folder or dict."""
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        return cls(
            rebuild_model(ckpt),
            labels=ckpt["labels"],
            preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]),
            task=str(ckpt.get("task", "diagnosis")),
            model_name=ckpt["model"]["name"],
            device=device,
            batch_size=batch_size,
            meta={
                "kwargs": dict(ckpt["model"]["kwargs"]),
                "epoch": ckpt.get("epoch"),
                "metrics": ckpt.get("metrics", {}),
                "checkpoint": ckpt.get("path"),
            },
        )

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.pipeline.config

    def input_shape(self) -> tuple[int, int | None, int, int]:
        """``(C, D, H, W)`` of one network input; D is None when it follows the scan ("keep" mode)."""
        cfg = self.preprocess_config
        depth = {"uniformize": cfg.depth, "stack": cfg.chunk_depth}.get(cfg.depth_mode)
        return cfg.in_channels, depth, cfg.size_hw[0], cfg.size_hw[1]

    def info(self) -> dict[str, Any]:
        """What the model is: name, task, labels, input and preprocessing (for ``/v1/model``)."""
        return {
            "name": self.model_name,
            "task": self.task,
            "labels": self.labels,
            "input_shape": list(self.input_shape()),
            "preprocess": self.preprocess_config.to_dict(),
            "device": str(self.device),
            **{k: v for k, v in self.meta.items() if k != "checkpoint"},
        }

    # ------------------------------------------------------------------ single scan
    def prepare(self, volume: Volume, scan_id: str = "scan") -> tuple[Preprocessed, list[Chunk]]:
        """The preprocessed scan and the chunks the network sees."""
        pre = self.pipeline.process(volume)
        chunks = self.pipeline.chunks(pre.array, scan_id)
        if not chunks:
            raise CtcovidError(
                f"scan '{scan_id}' gives no network input: {pre.array.shape[1]} slices after preprocessing, "
                f"chunk_depth={self.preprocess_config.chunk_depth} with chunk_short='drop'"
            )
        return pre, chunks

    def forward_probs(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax probabilities ``(N, K)`` of N inputs ``(C, D, H, W)``, run ``batch_size`` at a time.

        Batches are stacked one at a time, so a scan of many chunks is never copied whole. Only
        consecutive inputs of the same shape share a batch: with ``depth_mode="keep"`` scans of
        different depths run in separate batches (in eval mode a batch's composition does not
        change any input's answer), never padded.
        """
        out = []
        with torch.inference_mode():
            for batch in _same_shape_batches(arrays, self.batch_size):
                x = torch.from_numpy(np.stack(batch)).to(self.device)
                out.append(torch.softmax(self.model(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def predict(self, volume: Volume, scan_id: str = "scan", *, path: str | None = None) -> Prediction:
        """Predict one scan already in memory."""
        t0 = time.perf_counter()
        pre, chunks = self.prepare(volume, scan_id)
        t1 = time.perf_counter()
        probs = self.forward_probs([c.array for c in chunks])
        timings = {"preprocess": t1 - t0, "inference": time.perf_counter() - t1}
        return self.assemble(scan_id, [*volume.warnings, *pre.warnings], chunks, probs, timings, path)

    def predict_path(
        self,
        path: str | Path,
        scan_id: str | None = None,
        *,
        tmp_dir: str | Path | None = None,
        zip_limits: ZipLimits | None = None,
    ) -> Prediction:
        """Read one scan (DICOM folder, NIfTI, slice folder, array, ``.zip`` of a series) and predict.

        Raises:
            ScanReadError: the scan cannot be read (a ``.zip`` is also refused when unsafe).
        """
        p = Path(path)
        sid = scan_id or scan_id_of(p)
        t0 = time.perf_counter()
        with open_scan(p, tmp_dir=tmp_dir, zip_limits=zip_limits) as volume:
            read_s = time.perf_counter() - t0
            pred = self.predict(volume, sid, path=str(p))
        pred.timings_s = {"read": read_s, **pred.timings_s}
        return pred

    def assemble(
        self,
        scan_id: str,
        warnings: list[str],
        chunks: list[Chunk],
        probs: np.ndarray,
        timings: dict[str, float],
        path: str | None,
    ) -> Prediction:
        mean = probs.mean(axis=0)
        as_dict = lambda p: {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}  # noqa: E731
        chunk_preds = [ChunkPrediction(c.index, c.start, c.stop, as_dict(p)) for c, p in zip(chunks, probs)]
        return Prediction(
            scan_id=scan_id,
            label=self.labels[int(np.argmax(mean))],
            probs=as_dict(mean),
            chunks=chunk_preds,
            warnings=warnings,
            task=self.task,
            path=path,
            timings_s={k: round(v, 4) for k, v in timings.items()},
        )

    # ------------------------------------------------------------------ many scans
    def predict_paths(
        self, paths: Sequence[str | Path], *, progress: Progress | None = None
    ) -> list[Prediction]:
        """Predict every scan at or below ``paths`` (see :func:`~ctcovid.predict.inputs.find_scans`).

        Never raises for one bad scan: it comes back with ``error`` set. Chunks of consecutive
        scans share batches; the next scan is read while the network runs.
        """
        jobs: list[tuple[str, Path | None, str | None]] = []  # (scan_id, path, error)
        for p in paths:
            try:
                jobs.extend((sid, sp, None) for sid, sp in find_scans(p))
            except CtcovidError as e:
                jobs.append((scan_id_of(Path(p)), Path(p), describe_error(e)))
        results: list[Prediction | None] = [None] * len(jobs)
        run = BatchRun(self, jobs, results, progress)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctcovid-read") as pool:
            run.go(pool)
        return [r for r in results if r is not None]
