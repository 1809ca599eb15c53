"""Many scans through one :class:`~ctcovid.predict.predictor.Predictor`: the bookkeeping of
:meth:`~ctcovid.predict.predictor.Predictor.predict_paths` (chunks of consecutive scans share
batches, the next scan is read while the network runs, one bad scan never stops the others)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ctcovid.predict.inputs import open_scan
from ctcovid.predict.result import Prediction, Progress
from ctcovid.preprocess.depth import Chunk

if TYPE_CHECKING:
    from ctcovid.preprocess.pipeline import Preprocessed
    from ctcovid.types import Volume

log = logging.getLogger(__name__)


class Model(Protocol):
    """What a batch run needs of a predictor (:class:`~ctcovid.predict.predictor.Predictor` is one)."""

    task: str
    batch_size: int

    def prepare(self, volume: Volume, scan_id: str = ...) -> tuple[Preprocessed, list[Chunk]]: ...

    def forward_probs(self, arrays: Sequence[np.ndarray]) -> np.ndarray: ...

    def assemble(
        self,
        scan_id: str,
        warnings: list[str],
        chunks: list[Chunk],
        probs: np.ndarray,
        timings: dict[str, float],
        path: str | None,
    ) -> Prediction: ...


@dataclass
class _Loaded:
    """A scan read and preprocessed, waiting for the network."""

    warnings: list[str]  # the volume itself is dropped as soon as it is preprocessed
    chunks: list[Chunk]
    timings_s: dict[str, float]


class BatchRun:
    """The bookkeeping of :meth:`Predictor.predict_paths`: pending chunks, finished scans."""

    def __init__(
        self,
        predictor: Model,
        jobs: list[tuple[str, Path | None, str | None]],
        results: list[Prediction | None],
        progress: Progress | None,
    ) -> None:
        self.p, self.jobs, self.results, self.progress = predictor, jobs, results, progress
        self.loaded: dict[int, _Loaded] = {}
        self.probs: dict[int, list[np.ndarray | None]] = {}
        self.pending: list[tuple[int, int]] = []  # (job index, chunk index)
        self.done = 0

    def go(self, pool: ThreadPoolExecutor) -> None:
        todo = [i for i, (_, path, err) in enumerate(self.jobs) if err is None and path is not None]
        for i, (sid, path, err) in enumerate(self.jobs):
            if err is not None:
                self._finish(i, Prediction.failure(sid, err, task=self.p.task, path=path))
        future: Future[_Loaded] | None = self._submit(pool, todo, 0)
        for k, i in enumerate(todo):
            assert future is not None
            current, future = future, self._submit(pool, todo, k + 1)  # read ahead while we compute
            sid, path, _ = self.jobs[i]
            try:
                loaded = current.result()
            except Exception as e:  # one bad scan must not stop the others; it is reported instead
                log.debug("scan %s failed", sid, exc_info=True)
                self._finish(i, Prediction.failure(sid, e, task=self.p.task, path=path))
                continue
            self.loaded[i] = loaded
            self.probs[i] = [None] * len(loaded.chunks)
            self.pending.extend((i, c) for c in range(len(loaded.chunks)))
            self._flush(force=False)
        self._flush(force=True)

    def _submit(self, pool: ThreadPoolExecutor, todo: list[int], k: int) -> Future[_Loaded] | None:
        if k >= len(todo):
            return None
        sid, path, _ = self.jobs[todo[k]]
        assert path is not None
        return pool.submit(self._load, sid, path)

    def _load(self, scan_id: str, path: Path) -> _Loaded:
        t0 = time.perf_counter()
        with open_scan(path) as volume:
            t1 = time.perf_counter()
            pre, chunks = self.p.prepare(volume, scan_id)
        timings = {"read": t1 - t0, "preprocess": time.perf_counter() - t1}
        return _Loaded([*volume.warnings, *pre.warnings], chunks, timings)

    def _flush(self, *, force: bool) -> None:
        bs = self.p.batch_size
        while len(self.pending) >= bs or (force and self.pending):
            batch, self.pending = self.pending[:bs], self.pending[bs:]
            alive = [(i, c) for i, c in batch if i in self.loaded]
            if not alive:
                continue
            t0 = time.perf_counter()
            try:
                probs = self.p.forward_probs([self.loaded[i].chunks[c].array for i, c in alive])
            except Exception as e:  # e.g. out of memory: fail these scans, keep going
                log.debug("batch failed", exc_info=True)
                for i in sorted({i for i, _ in alive}):
                    sid, path, _ = self.jobs[i]
                    self.loaded.pop(i, None)
                    self._finish(i, Prediction.failure(sid, e, task=self.p.task, path=path))
                continue
            share = (time.perf_counter() - t0) / len(alive)
            for (i, c), pr in zip(alive, probs):
                self.probs[i][c] = pr
                t = self.loaded[i].timings_s
                t["inference"] = t.get("inference", 0.0) + share
            for i in sorted({i for i, _ in alive}):
                if all(p is not None for p in self.probs[i]):
                    self._complete(i)

    def _complete(self, i: int) -> None:
        loaded = self.loaded.pop(i)
        sid, path, _ = self.jobs[i]
        probs = np.stack([p for p in self.probs.pop(i) if p is not None])
        pred = self.p.assemble(sid, loaded.warnings, loaded.chunks, probs, loaded.timings_s, str(path))
        self._finish(i, pred)

    def _finish(self, i: int, pred: Prediction) -> None:
        self.results[i] = pred
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.jobs))
