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
from ctcovid.predict.result import ChunkOutputs, Prediction, Progress
from ctcovid.preprocess.depth import Chunk

if TYPE_CHECKING:
    from ctcovid.predict.quality import QualityReport
    from ctcovid.preprocess.pipeline import Preprocessed
    from ctcovid.types import Volume

log = logging.getLogger(__name__)


class Model(Protocol):
    """What a batch run needs of a predictor (:class:`~ctcovid.predict.predictor.Predictor` is one)."""

    task: str
    batch_size: int

    def check(self, volume: Volume) -> QualityReport | None: ...

    def prepare(self, volume: Volume, scan_id: str = ...) -> tuple[Preprocessed, list[Chunk]]: ...

    def forward(self, arrays: Sequence[np.ndarray]) -> ChunkOutputs: ...

    def assemble(
        self,
        scan_id: str,
        warnings: list[str],
        chunks: list[Chunk],
        out: ChunkOutputs | None,
        timings: dict[str, float],
        path: str | None,
        quality: QualityReport | None = ...,
    ) -> Prediction: ...


@dataclass
class _Loaded:
    """A scan read and preprocessed, waiting for the network."""

    warnings: list[str]  # the volume itself is dropped as soon as it is preprocessed
    chunks: list[Chunk]  # empty when a blocking quality check failed
    timings_s: dict[str, float]
    quality: QualityReport | None


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
        self.outs: dict[int, list[ChunkOutputs | None]] = {}
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
            if not loaded.chunks:  # not assessable: answered without the network
                self._complete(i)
                continue
            self.outs[i] = [None] * len(loaded.chunks)
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
            quality = self.p.check(volume)
            t2 = time.perf_counter()
            timings = {"read": t1 - t0, "quality": t2 - t1}
            if quality is not None and not quality.ok:
                return _Loaded(list(volume.warnings), [], timings, quality)
            pre, chunks = self.p.prepare(volume, scan_id)
        timings["preprocess"] = time.perf_counter() - t2
        return _Loaded([*volume.warnings, *pre.warnings], chunks, timings, quality)

    def _flush(self, *, force: bool) -> None:
        bs = self.p.batch_size
        while len(self.pending) >= bs or (force and self.pending):
            batch, self.pending = self.pending[:bs], self.pending[bs:]
            alive = [(i, c) for i, c in batch if i in self.loaded]
            if not alive:
                continue
            t0 = time.perf_counter()
            try:
                out = self.p.forward([self.loaded[i].chunks[c].array for i, c in alive])
            except Exception as e:  # e.g. out of memory: fail these scans, keep going
                log.debug("batch failed", exc_info=True)
                for i in sorted({i for i, _ in alive}):
                    sid, path, _ = self.jobs[i]
                    self.loaded.pop(i, None)
                    self._finish(i, Prediction.failure(sid, e, task=self.p.task, path=path))
                continue
            share = (time.perf_counter() - t0) / len(alive)
            for k, (i, c) in enumerate(alive):
                self.outs[i][c] = out.row(k)
                t = self.loaded[i].timings_s
                t["inference"] = t.get("inference", 0.0) + share
            for i in sorted({i for i, _ in alive}):
                if all(o is not None for o in self.outs[i]):
                    self._complete(i)

    def _complete(self, i: int) -> None:
        loaded = self.loaded.pop(i)
        sid, path, _ = self.jobs[i]
        parts = [o for o in self.outs.pop(i, []) if o is not None]
        out = ChunkOutputs.concat(parts) if parts else None
        pred = self.p.assemble(
            sid, loaded.warnings, loaded.chunks, out, loaded.timings_s, str(path), loaded.quality
        )
        self._finish(i, pred)

    def _finish(self, i: int, pred: Prediction) -> None:
        self.results[i] = pred
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.jobs))
