"""The answer for one scan: :class:`Prediction` (label, probabilities, chunks, warnings, error)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctcovid.errors import CtcovidError

Progress = Callable[[int, int], None]


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

    @property
    def ok(self) -> bool:
        return self.error is None

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
            "timings_s": self.timings_s,
        }

    @classmethod
    def failure(
        cls, scan_id: str, error: BaseException | str, *, task: str, path: str | Path | None
    ) -> Prediction:
        path = str(path) if path is not None else None
        return cls(scan_id, None, {}, task=task, path=path, error=describe_error(error))


def describe_error(error: BaseException | str) -> str:
    """Our errors say it all; anything else gets its type name in front."""
    if isinstance(error, str | CtcovidError):
        return str(error)
    return f"{type(error).__name__}: {error}"
