"""The answer for one scan: :class:`Prediction` (label, probabilities, chunks, warnings, error),
and how far to trust it: ``quality``, ``ood_score``, ``uncertainty``, ``refer``.

The trust fields are an output contract other tools read (README, "Can I trust this answer?"):

* ``quality``: ``{"ok": bool, "problems": [str, ...]}`` (plus ``blocking``, ``warnings``,
  ``stats``); ``ok`` false means the scan is **not assessable**: ``label`` is None, no probabilities;
* ``ood_score``: distance to the training data, 0 = a typical validation scan, above 1 = out of
  distribution (None when the checkpoint has no reliability data or the scan was not assessed);
* ``uncertainty``: normalised entropy of the answer in [0, 1] (None when not assessed);
* ``refer``: true when the scan is not assessable, out of distribution or too uncertain;
  ``refer_reasons`` says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctcovid.errors import CtcovidError

Progress = Callable[[int, int], None]


@dataclass
class ChunkOutputs:
    """What the network says about N inputs: calibrated probabilities, their samples, OOD scores."""

    probs: np.ndarray  # (N, K): mean over samples (members x MC passes), temperature-scaled
    samples: np.ndarray  # (N, S, K): S samples of the distribution (S = 1 for one model, no MC)
    ood: np.ndarray  # (N,): scaled OOD score (mean over members), NaN when unavailable

    def __len__(self) -> int:
        return len(self.probs)

    def row(self, i: int) -> ChunkOutputs:
        return ChunkOutputs(self.probs[i : i + 1], self.samples[i : i + 1], self.ood[i : i + 1])

    @staticmethod
    def concat(parts: Sequence[ChunkOutputs]) -> ChunkOutputs:
        return ChunkOutputs(
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.samples for p in parts]),
            np.concatenate([p.ood for p in parts]),
        )


@dataclass
class ChunkPrediction:
    """Probabilities of one chunk: slices ``start:stop`` of the preprocessed scan."""

    index: int
    start: int
    stop: int
    probs: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "stop": self.stop, "probs": self.probs}


@dataclass
class Prediction:
    """The answer for one scan. ``error`` is set (and ``label`` None) when the scan failed."""

    scan_id: str
    label: str | None
    probs: dict[str, float]
    chunks: list[ChunkPrediction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    task: str = "diagnosis"
    path: str | None = None
    error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    ood_score: float | None = None
    uncertainty: float | None = None
    refer: bool = False
    refer_reasons: list[str] = field(default_factory=list)
    reliability: dict[str, Any] = field(default_factory=dict)  # how the trust fields were computed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def assessable(self) -> bool:
        """False when a blocking quality check failed (no label is given)."""
        return self.quality is None or bool(self.quality.get("ok", True))

    @property
    def severity(self) -> str | None:
        """The predicted severity group (low / medium / high) for a severity model, else None."""
        return self.label if self.task == "severity" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "path": self.path,
            "task": self.task,
            "label": self.label,
            "severity": self.severity,
            "probs": self.probs,
            "n_chunks": len(self.chunks),
            "chunks": [c.to_dict() for c in self.chunks],
            "warnings": self.warnings,
            "error": self.error,
            "quality": self.quality,
            "ood_score": self.ood_score,
            "uncertainty": self.uncertainty,
            "refer": self.refer,
            "refer_reasons": self.refer_reasons,
            "reliability": self.reliability,
            "timings_s": self.timings_s,
        }

    @classmethod
    def failure(
        cls, scan_id: str, error: BaseException | str, *, task: str, path: str | Path | None
    ) -> Prediction:
        path = str(path) if path is not None else None
        why = describe_error(error)
        return cls(
            scan_id, None, {}, task=task, path=path, error=why, refer=True, refer_reasons=[f"error: {why}"]
        )


def describe_error(error: BaseException | str) -> str:
    """Our errors say it all; anything else gets its type name in front."""
    if isinstance(error, str | CtcovidError):
        return str(error)
    return f"{type(error).__name__}: {error}"
