"""Crash-safe on-disk cache of preprocessed scans.

Layout: ``<cache_root>/<config hash>/`` holds ``config.json`` (the preprocessing config the
entries were made with) and, per scan, ``<key>.npy`` (the float32 ``(C, D, H, W)`` array) and
``<key>.json`` (its source signature, shape, geometry and warnings). The hash covers the
deterministic part of the config, so changing a window or a size starts a new folder and never
mixes arrays made two ways.

Crash safety: each file is written to a temporary name and renamed into place, the array before
its ``.json``, and an entry counts only when its ``.json`` exists and names the array's shape. A
process killed at any point leaves either a complete entry or debris that is ignored and rebuilt;
finished entries are never rebuilt. An entry whose source file changed (size or modification time)
is rebuilt too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from ctcovid.data.manifest import ManifestRow
from ctcovid.errors import CtcovidError
from ctcovid.preprocess.pipeline import PreprocessConfig, build_pipeline

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


def config_hash(cfg: PreprocessConfig) -> str:
    d = cfg.to_dict()
    d.pop("augment", None)  # augmentation happens after the cache, on the fly
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def source_signature(path: Path) -> list[Any]:
    """Size and mtime of a file, or of every file in a folder: changes when the scan changes."""
    p = Path(str(path).split("#", 1)[0])
    if p.is_dir():
        return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in p.iterdir() if f.is_file())
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


def _key(scan_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", scan_id)[:80]
    return f"{safe}-{hashlib.sha1(scan_id.encode()).hexdigest()[:8]}"


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PreprocessCache:
    """Preprocessed arrays of manifest rows, built once and memory-mapped afterwards."""

    def __init__(self, root: str | Path, cfg: PreprocessConfig, scans_root: str | Path) -> None:
        self.cfg = cfg
        self.dir = Path(root) / config_hash(cfg)
        self.scans_root = Path(scans_root)
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg_file = self.dir / "config.json"
        if not cfg_file.exists():
            _atomic_write_bytes(cfg_file, lambda f: f.write(json.dumps(cfg.to_dict(), indent=2).encode()))

    def paths(self, row: ManifestRow) -> tuple[Path, Path]:
        k = _key(row.scan_id)
        return self.dir / f"{k}.npy", self.dir / f"{k}.json"

    def meta(self, row: ManifestRow) -> dict[str, Any] | None:
        """The entry's metadata if the entry is complete and current, else None."""
        npy, meta_path = self.paths(row)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if not npy.is_file() or meta.get("scan_id") != row.scan_id:
            return None
        try:
            if meta.get("source") != json.loads(json.dumps(source_signature(row.resolve(self.scans_root)))):
                return None
        except OSError:
            return None
        return meta

    def load(self, row: ManifestRow) -> np.ndarray:
        """The cached array (memory-mapped, read-only); builds the entry first when needed."""
        meta = self.meta(row)
        if meta is None:
            meta = build_entry(self, row)
        arr = np.load(self.paths(row)[0], mmap_mode="r")
        if list(arr.shape) != meta["shape"]:
            raise CtcovidError(f"cache entry of scan {row.scan_id!r} in {self.dir} is corrupt; delete it")
        return arr

    def missing(self, rows: Sequence[ManifestRow]) -> list[ManifestRow]:
        return [r for r in rows if self.meta(r) is None]

    def build(
        self, rows: Sequence[ManifestRow], *, workers: int = 1, progress: Progress | None = None
    ) -> int:
        """Build every missing entry (in ``workers`` processes); returns how many were built."""
        todo = self.missing(rows)
        total, done = len(rows), len(rows) - len(todo)
        if progress:
            progress(done, total)
        if workers <= 1 or len(todo) < 4 * workers:  # a spawned worker costs ~1 s to start (imports)
            for row in todo:
                build_entry(self, row)
                done += 1
                if progress:
                    progress(done, total)
            return len(todo)
        # spawn, not fork: forking a process whose OpenMP thread pool is already running (torch after
        # a training epoch) deadlocks the children.
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [
                pool.submit(
                    _build_in_worker, str(self.dir.parent), self.cfg.to_dict(), str(self.scans_root), row
                )
                for row in todo
            ]
            for fut in as_completed(futures):
                fut.result()  # re-raises a worker's error (a ScanReadError names the scan)
                done += 1
                if progress:
                    progress(done, total)
        return len(todo)


def _build_in_worker(root: str, cfg: dict[str, Any], scans_root: str, row: ManifestRow) -> None:
    build_entry(PreprocessCache(root, PreprocessConfig.from_dict(cfg), scans_root), row)


def build_entry(cache: PreprocessCache, row: ManifestRow) -> dict[str, Any]:
    """Read, preprocess and store one scan; the ``.json`` written last marks the entry complete."""
    from ctcovid.data.dataset import load_row_volume

    npy, meta_path = cache.paths(row)
    meta_path.unlink(missing_ok=True)  # an old entry is invalid from here on
    signature = source_signature(row.resolve(cache.scans_root))
    volume = load_row_volume(row, cache.scans_root)
    result = build_pipeline(cache.cfg).process(volume)
    array = np.ascontiguousarray(result.array, dtype=np.float32)
    _atomic_write_bytes(npy, lambda f: np.save(f, array))
    meta = {
        "scan_id": row.scan_id,
        "shape": list(array.shape),
        "source": signature,
        "spacing_mm": list(result.spacing_mm),
        "origin_mm": list(result.origin_mm),
        "body_found": result.body_found,
        "warnings": [*volume.warnings, *result.warnings],
    }
    _atomic_write_bytes(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    return meta
