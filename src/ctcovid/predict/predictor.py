"""From a scan to an answer: :class:`Predictor` wraps a checkpoint's model and its preprocessing.

>>> predictor = Predictor.from_checkpoint("runs/demo/checkpoint_best.pt")  # doctest: +SKIP
>>> predictor.predict_path("scan.nii.gz").probs  # doctest: +SKIP
{'NCP': 0.91, 'CP': 0.06, 'Normal': 0.03}

The pipeline is rebuilt from the checkpoint's ``preprocess`` dict, so a scan is seen exactly as
in training. A depth-n model (``depth_mode="stack"``) sees a scan as many chunks: each chunk gets
probabilities and the scan's are their mean, as in evaluation. :meth:`Predictor.predict_paths`
runs many scans, batching chunks across scans and reading the next scan while the network works;
a scan that fails is returned with its ``error`` and the others go on.

Every answer says how far to trust it (:mod:`ctcovid.predict.result`): quality checks run on the
scan before the network (:mod:`ctcovid.predict.quality`; a blocking problem gives "not assessable"
and no label), probabilities are temperature-scaled, and the out-of-distribution score and the
uncertainty decide ``refer``, all from the checkpoint's ``reliability`` data (fitted after training,
:mod:`ctcovid.train.reliability`). Several checkpoints (:meth:`Predictor.from_checkpoints`) form a
deep ensemble; ``mc_samples`` turns on MC dropout.
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
from ctcovid.metrics import reliability as R
from ctcovid.metrics.metrics import decide, decision_for_head
from ctcovid.models.features import enable_dropout, forward_with_features, mc_head_samples
from ctcovid.predict.batch import BatchRun
from ctcovid.predict.inputs import ZipLimits, find_scans, open_scan, scan_id_of
from ctcovid.predict.member import DEFAULT_REFER_UNCERTAINTY, Member, softmax
from ctcovid.predict.quality import QualityReport, check_volume
from ctcovid.predict.result import ChunkOutputs, ChunkPrediction, Prediction, Progress, describe_error
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
    """A model (or an ensemble), its labels and its preprocessing, ready to answer for scans."""

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
        reliability: dict[str, Any] | None = None,
        members: Sequence[Member] = (),
        mc_samples: int = 0,
        refer_uncertainty: float | None = None,
        ood_method: str | None = None,
        quality_checks: bool = True,
    ) -> None:
        """``model`` with its checkpoint's ``reliability`` dict; ``members`` adds ensemble members.

        ``mc_samples`` > 0: MC dropout with that many stochastic passes (the model needs dropout).
        ``refer_uncertainty``, ``ood_method``: override the checkpoint's (see README).
        ``quality_checks=False`` skips the scan checks (not recommended; for benchmarks).
        """
        if getattr(model, "spatial_dims", 3) != 3:
            raise CtcovidError(
                f"model '{model_name}' takes 2D slices; predict and serve support volume (3D) models"
            )
        if batch_size < 1:
            raise CtcovidError(f"batch_size={batch_size} is invalid; expected an integer >= 1")
        if mc_samples < 0:
            raise CtcovidError(f"mc_samples={mc_samples} is invalid; expected 0 (off) or more")
        if ood_method not in (None, "mahalanobis", "energy"):
            raise CtcovidError(f"unknown OOD method {ood_method!r}; use mahalanobis or energy")
        if refer_uncertainty is not None and not 0.0 < refer_uncertainty <= 1.0:
            raise CtcovidError(
                f"refer_uncertainty={refer_uncertainty} is invalid; expected a value in (0, 1]"
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.members = [Member.build(self.model, reliability), *members]
        for m in self.members[1:]:
            m.model = m.model.to(self.device).eval()
        self.mc_samples = int(mc_samples)
        if self.mc_samples:
            for m in self.members:
                if enable_dropout(m.model, False) == 0:
                    raise CtcovidError(
                        f"MC dropout needs dropout layers, and model '{model_name}' has none (dropout 0); "
                        "train with model.dropout > 0 (CT-S models have 0.5) or use an ensemble of checkpoints"
                    )
        first = self.members[0]
        # A fitted threshold may be 0 (the model never met the target risk: refer every answer).
        fitted = first.refer_uncertainty
        self.refer_uncertainty = float(
            refer_uncertainty
            if refer_uncertainty is not None
            else fitted
            if fitted is not None
            else DEFAULT_REFER_UNCERTAINTY
        )
        self.ood_method = ood_method or first.ood_method or "mahalanobis"
        self.quality_checks = quality_checks
        self.labels = list(labels)
        self.task = task
        self.model_name = model_name
        self.batch_size = int(batch_size)
        self.pipeline: Pipeline = build_pipeline(preprocess)
        self.decision = decision_for_head(getattr(model, "head", None))  # median for ordinal heads
        self.meta = dict(meta or {})

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | dict[str, Any],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        **options: Any,
    ) -> Predictor:
        """Rebuild model, labels and preprocessing from a checkpoint file, run folder or dict.

        ``options``: ``mc_samples``, ``refer_uncertainty``, ``ood_method``, ``quality_checks``.
        """
        return cls.from_checkpoints([checkpoint], device=device, batch_size=batch_size, **options)

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[str | Path | dict[str, Any]],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        **options: Any,
    ) -> Predictor:
        """A deep ensemble: the mean of several checkpoints' calibrated probabilities.

        The members must share labels and preprocessing (so one pipeline serves them all); the
        first one's reliability settings (refer threshold, OOD method) and quality reference apply.
        """
        if not checkpoints:
            raise CtcovidError("no checkpoint given")
        ckpts = [c if isinstance(c, dict) else load_checkpoint(c) for c in checkpoints]
        first = ckpts[0]
        for c in ckpts[1:]:
            for key in ("labels", "preprocess"):
                if c[key] != first[key]:
                    raise CtcovidError(
                        f"ensemble members differ in {key}: {first.get('path')} has {first[key]!r}, "
                        f"{c.get('path')} has {c[key]!r}; an ensemble needs one pipeline and one label set"
                    )
        members = [Member.build(rebuild_model(c), c.get("reliability")) for c in ckpts[1:]]
        return cls(
            rebuild_model(first),
            labels=first["labels"],
            preprocess=PreprocessConfig.from_dict(first["preprocess"]),
            task=str(first.get("task", "diagnosis")),
            model_name=first["model"]["name"],
            device=device,
            batch_size=batch_size,
            meta={
                "kwargs": dict(first["model"]["kwargs"]),
                "epoch": first.get("epoch"),
                "metrics": first.get("metrics", {}),
                "checkpoint": first.get("path"),
                "ensemble": [c.get("path") for c in ckpts] if len(ckpts) > 1 else None,
            },
            reliability=first.get("reliability"),
            members=members,
            **options,
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
            "reliability": self.reliability_info(),
            **{k: v for k, v in self.meta.items() if k not in ("checkpoint", "ensemble")},
        }

    def reliability_info(self) -> dict[str, Any]:
        """How the trust fields are computed (copied into every prediction)."""
        first = self.members[0]
        return {
            "temperature": [round(m.temperature, 4) for m in self.members],
            "ood_method": self.ood_method if first.ood.get(self.ood_method) else None,
            "refer_uncertainty": self.refer_uncertainty,
            "members": len(self.members),
            "mc_samples": self.mc_samples,
            "fitted": all(bool(m.ood) for m in self.members),  # the checkpoints carry reliability data
        }

    # ------------------------------------------------------------------ quality
    def check(self, volume: Volume) -> QualityReport | None:
        """The scan checks against the training cohort's ranges (None when switched off)."""
        if not self.quality_checks:
            return None
        return check_volume(volume, self.members[0].quality_reference)

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

    def forward(self, arrays: Sequence[np.ndarray]) -> ChunkOutputs:
        """Calibrated probabilities, their samples and OOD scores of N inputs ``(C, D, H, W)``.

        Runs ``batch_size`` inputs at a time; batches are stacked one at a time, so a scan of many
        chunks is never copied whole. Only consecutive inputs of the same shape share a batch: with
        ``depth_mode="keep"`` scans of different depths run in separate batches (in eval mode a
        batch's composition does not change any input's answer), never padded. Each member runs
        once in eval mode (probabilities, features, OOD score) and, with MC dropout,
        ``mc_samples`` more times with only its dropout layers active.
        """
        probs, samples, ood = [], [], []
        with torch.inference_mode():
            for batch in _same_shape_batches(arrays, self.batch_size):
                x = torch.from_numpy(np.stack(batch)).to(self.device)
                draws, scores = [], []
                for m in self.members:
                    logits, feats = forward_with_features(m.model, x)
                    z = logits.float().cpu().numpy().astype(np.float64)
                    f = None if feats is None else feats.float().cpu().numpy()
                    score = m.ood_score(self.ood_method, z, f)
                    scores.append(np.full(len(z), np.nan) if score is None else score)
                    p = R.temper(softmax(z), m.temperature)
                    if not self.mc_samples:
                        draws.append(p)
                        continue
                    fast = None if feats is None else mc_head_samples(m.model, feats, self.mc_samples)
                    if fast is not None:  # dropout only before the head: sample it on the features
                        for zs in fast.float().cpu().numpy().astype(np.float64):
                            draws.append(R.temper(softmax(zs), m.temperature))
                        continue
                    enable_dropout(m.model, True)
                    try:
                        for _ in range(self.mc_samples):
                            zs = m.model(x).float().cpu().numpy().astype(np.float64)
                            draws.append(R.temper(softmax(zs), m.temperature))
                    finally:
                        enable_dropout(m.model, False)
                stack = np.stack(draws, axis=1)  # (B, S, K)
                samples.append(stack)
                probs.append(stack.mean(1))
                ood.append(np.mean(np.stack(scores), axis=0))
        return ChunkOutputs(np.concatenate(probs), np.concatenate(samples), np.concatenate(ood))

    def forward_probs(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` of N inputs (see :meth:`forward`)."""
        return self.forward(arrays).probs

    def predict(self, volume: Volume, scan_id: str = "scan", *, path: str | None = None) -> Prediction:
        """Predict one scan already in memory (quality checks first: see the module docstring)."""
        t0 = time.perf_counter()
        quality = self.check(volume)
        if quality is not None and not quality.ok:
            timings = {"quality": time.perf_counter() - t0}
            return self.assemble(scan_id, list(volume.warnings), [], None, timings, path, quality)
        t1 = time.perf_counter()
        pre, chunks = self.prepare(volume, scan_id)
        t2 = time.perf_counter()
        out = self.forward([c.array for c in chunks])
        timings = {"quality": t1 - t0, "preprocess": t2 - t1, "inference": time.perf_counter() - t2}
        return self.assemble(scan_id, [*volume.warnings, *pre.warnings], chunks, out, timings, path, quality)

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
        out: ChunkOutputs | None,
        timings: dict[str, float],
        path: str | None,
        quality: QualityReport | None = None,
    ) -> Prediction:
        """One scan's answer from its chunks' outputs (``out`` None: not assessable)."""
        q = quality.to_dict() if quality is not None else None
        if quality is not None and not quality.ok:
            return Prediction(
                scan_id=scan_id,
                label=None,
                probs={},
                warnings=warnings,
                task=self.task,
                path=path,
                timings_s={k: round(v, 4) for k, v in timings.items()},
                quality=q,
                refer=True,
                refer_reasons=[f"not assessable: {b}" for b in quality.blocking],
                reliability=self.reliability_info(),
            )
        assert out is not None and len(out) == len(chunks)
        mean = out.probs.mean(axis=0)
        as_dict = lambda p: {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}  # noqa: E731
        chunk_preds = [
            ChunkPrediction(c.index, c.start, c.stop, as_dict(p)) for c, p in zip(chunks, out.probs)
        ]
        uncertainty = float(R.normalized_entropy(mean))
        ood = float(np.mean(out.ood)) if np.isfinite(out.ood).all() else None
        reasons = []
        if ood is not None and ood > 1.0:
            reasons.append(
                f"out of distribution: score {ood:.2f} > 1 (unlike {self.ood_method} scores of the "
                "validation scans)"
            )
        if uncertainty > self.refer_uncertainty:
            reasons.append(
                f"uncertain: {uncertainty:.2f} > {self.refer_uncertainty:.2f} (normalised entropy)"
            )
        info = self.reliability_info()
        if out.samples.shape[1] > 1:  # the part of the uncertainty from disagreement between samples
            per_scan = out.samples.mean(axis=0, keepdims=True)  # (1, S, K): each sample's scan answer
            info["mutual_information"] = round(float(R.mutual_information(per_scan)[0]), 4)
        label = self.labels[int(decide(mean[None], self.decision)[0])]
        return Prediction(
            scan_id=scan_id,
            label=label,
            probs=as_dict(mean),
            chunks=chunk_preds,
            warnings=warnings,  # the quality warnings are in quality["problems"]
            task=self.task,
            path=path,
            timings_s={k: round(v, 4) for k, v in timings.items()},
            quality=q,
            ood_score=None if ood is None else round(ood, 4),
            uncertainty=round(uncertainty, 4),
            refer=bool(reasons),
            refer_reasons=reasons,
            reliability=info,
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
