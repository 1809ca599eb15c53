"""Crash-safe on-disk cache of preprocessed scans.

Layout: ``<cache_root>/<config hash>/`` holds ``config.json`` (the preprocessing config the
entries were made with) and, per scan, ``<key>.npy`` and ``<key>.json`` (its source signature,
shape, encoding, geometry and warnings). The hash covers the deterministic part of the config and
the storage format (:data:`CACHE_FORMAT`), so changing a window or a size, or a cache written by an
older version (float32 arrays), starts a new folder and never mixes arrays made two ways.

Format 2 (this one) stores what the source holds and nothing more: the ``.npy`` is the scan's
:class:`~ctcovid.preprocess.intensity.Encoding` planes, one per distinct window (channels that
repeat a window are repeated at load time), uint8 for 8-bit slice images and uint16 per HU
window: 1 byte a voxel for a CC-CCII PNG scan (3 replicated channels), 2 for a DICOM scan under a
one-window recipe, against 4 x channels in format 1. :meth:`PreprocessCache.load` memory-maps it
and decodes only the slices asked for, bit-exact what the pipeline returns.

Before writing, :meth:`PreprocessCache.plan` estimates the bytes the missing entries need from the
manifest's ``n_slices`` and :meth:`~PreprocessCache.check_space` refuses a build that will not fit
on the cache's disk; a disk that fills up anyway raises :class:`CacheFullError` naming the folder.

Crash safety: each file is written to a temporary name and renamed into place, the array before
its ``.json``, and an entry counts only when its ``.json`` exists and names the array's shape. A
process killed at any point leaves either a complete entry or debris that is ignored and rebuilt;
finished entries are never rebuilt. An entry whose source file changed (size or modification time)
is rebuilt too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctcovid.data.manifest import ManifestRow
from ctcovid.errors import CtcovidError
from ctcovid.preprocess.intensity import Encoding, encoding_for
from ctcovid.preprocess.pipeline import PreprocessConfig, build_pipeline
from ctcovid.types import Units

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
#: Storage format of the entries, part of the folder hash: 1 = float32 (C, D, H, W) arrays
#: (before 2026-12), 2 = :class:`~ctcovid.preprocess.intensity.Encoding` planes.
CACHE_FORMAT = 2
#: Manifest formats whose scans hold 8-bit display values (1 byte a voxel in the cache).
DISPLAY_FORMATS = frozenset({"slices", "png", "jpg", "jpeg", "bmp", "tif", "tiff"})


class CacheFullError(CtcovidError, OSError):
    """The cache's disk is full, or would be: the message names the folder and the sizes."""


def config_hash(cfg: PreprocessConfig) -> str:
    d: dict[str, Any] = cfg.to_dict()
    d.pop("augment", None)  # augmentation happens after the cache, on the fly
    if CACHE_FORMAT != 1:  # format 1 folders keep their old hash, so they are simply not used
        d["cache_format"] = CACHE_FORMAT
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
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # no torn file left behind, whatever the error
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFullError(
                f"no space left on the disk of the cache folder {path.parent} while writing {path.name} "
                f"({_free_text(path.parent)}): free some space or point data.cache_dir at a larger disk; "
                "finished entries are kept and the next run continues from them"
            ) from e
        raise


def _free_text(folder: Path) -> str:
    try:
        return f"{human_bytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        return "free space unknown"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass(frozen=True)
class CachePlan:
    """What building the cache for some rows will cost on disk (from the manifest's ``n_slices``)."""

    folder: Path
    n_scans: int
    n_missing: int
    total_bytes: int  # every entry, built or not
    missing_bytes: int  # the entries still to build
    free_bytes: int
    unknown: int  # missing scans without n_slices (counted at the median of the others)

    @property
    def fits(self) -> bool:
        return self.missing_bytes <= self.free_bytes

    def describe(self) -> str:
        text = (
            f"cache {self.folder}: {self.n_scans} scans need {human_bytes(self.total_bytes)}; "
            f"{self.n_missing} still to build, {human_bytes(self.missing_bytes)}; "
            f"{human_bytes(self.free_bytes)} free on that disk"
        )
        if self.unknown:
            text += f" ({self.unknown} scans without n_slices in the manifest counted at the median)"
        return text


class CachedScan:
    """A cache entry, memory-mapped: ``read(start, stop)`` decodes only those slices."""

    def __init__(self, planes: np.ndarray, encoding: Encoding) -> None:
        self.planes, self.encoding = planes, encoding

    @property
    def shape(self) -> tuple[int, int, int, int]:
        d, h, w = self.planes.shape[1:]
        return (len(self.encoding.channels), int(d), int(h), int(w))

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Float32 ``(C, stop - start, H, W)``: a fresh, writable array."""
        return self.encoding.decode(self.planes[:, start:stop])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)


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
        if not npy.is_file() or meta.get("scan_id") != row.scan_id or "encoding" not in meta:
            return None  # missing, someone else's, or an entry of an older format: rebuilt
        try:
            if meta.get("source") != json.loads(json.dumps(source_signature(row.resolve(self.scans_root)))):
                return None
        except OSError:
            return None
        return meta

    def load(self, row: ManifestRow) -> CachedScan:
        """The cached scan (memory-mapped, decoded on read); builds the entry first when needed."""
        meta = self.meta(row)
        if meta is None:
            meta = build_entry(self, row)
        return self.open(row, meta)

    def open(self, row: ManifestRow, meta: dict[str, Any]) -> CachedScan:
        """The entry of ``row`` whose :meth:`meta` the caller already checked: memory-mapped, no
        re-validation (a dataset checks every entry once, not once per sample: the source
        signature stats every file of a slice folder)."""
        planes = np.load(self.paths(row)[0], mmap_mode="r")
        encoding = Encoding.from_dict(meta["encoding"])
        if list(planes.shape) != meta["stored_shape"] or planes.dtype != np.dtype(encoding.dtype):
            raise CtcovidError(f"cache entry of scan {row.scan_id!r} in {self.dir} is corrupt; delete it")
        return CachedScan(planes, encoding)

    def entry_bytes(self, row: ManifestRow, n_slices: int) -> int:
        """Bytes of the entry of ``row`` (a scan of ``n_slices``) under this config; an upper
        bound where the body crop along z (``crop_z``) would shorten it."""
        cfg = self.cfg
        units = Units.DISPLAY if row.format.lower() in DISPLAY_FORMATS else Units.HU
        enc = encoding_for(
            units, cfg.windows_hu if units == Units.HU else cfg.windows_hu[:1], cfg.in_channels
        )
        depth = cfg.depth if cfg.depth_mode == "uniformize" else n_slices
        return enc.n_planes * enc.itemsize * depth * cfg.size_hw[0] * cfg.size_hw[1] + 128

    def plan(self, rows: Sequence[ManifestRow]) -> CachePlan:
        """Disk needed for ``rows`` (from their ``n_slices``) beside the free space of the cache's disk."""
        known = sorted(r.n_slices for r in rows if r.n_slices)
        median = known[len(known) // 2] if known else 0
        missing = {r.scan_id for r in self.missing(rows)}
        total = todo = unknown = 0
        for r in rows:
            n = self.entry_bytes(r, r.n_slices or median)
            total += n
            if r.scan_id in missing:
                todo += n
                unknown += not r.n_slices
        return CachePlan(
            self.dir, len(rows), len(missing), total, todo, shutil.disk_usage(self.dir).free, unknown
        )

    def check_space(self, rows: Sequence[ManifestRow], *, margin: float = 1.05) -> CachePlan:
        """The :meth:`plan`; raises :class:`CacheFullError` when the missing entries (with a 5 %
        margin) will not fit on the cache's disk, before anything is written."""
        plan = self.plan(rows)
        log.info("%s", plan.describe())
        if plan.missing_bytes * margin > plan.free_bytes:
            raise CacheFullError(
                f"the cache will not fit: {plan.describe()}. Free space, point data.cache_dir at a "
                "larger disk, lower preprocess.size_hw, or pass --ignore-disk-space to try anyway"
            )
        return plan

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


def _scan_stats(volume: Any, row: ManifestRow) -> dict[str, Any] | None:
    """The scan's quality statistics (the training cohort's ranges, for predict's checks)."""
    from ctcovid.preprocess.quality import measure

    try:
        return measure(volume).to_dict()
    except Exception as e:  # statistics must never stop a cache build; the reference just lacks this scan
        log.warning("scan %s: no quality statistics (%s: %s)", row.scan_id, type(e).__name__, e)
        return None


def build_entry(cache: PreprocessCache, row: ManifestRow) -> dict[str, Any]:
    """Read, preprocess and store one scan; the ``.json`` written last marks the entry complete."""
    from ctcovid.data.dataset import load_row_volume

    npy, meta_path = cache.paths(row)
    meta_path.unlink(missing_ok=True)  # an old entry is invalid from here on
    signature = source_signature(row.resolve(cache.scans_root))
    volume = load_row_volume(row, cache.scans_root)
    result = build_pipeline(cache.cfg).process(volume)
    planes = np.ascontiguousarray(result.planes)
    _atomic_write_bytes(npy, lambda f: np.save(f, planes))
    meta = {
        "scan_id": row.scan_id,
        "shape": list(result.shape),  # what load() decodes to: (C, D, H, W)
        "stored_shape": list(planes.shape),
        "encoding": result.encoding.to_dict(),
        "source": signature,
        "spacing_mm": list(result.spacing_mm),
        "origin_mm": list(result.origin_mm),
        "body_found": result.body_found,
        "warnings": [*volume.warnings, *result.warnings],
        "scan_stats": _scan_stats(volume, row),
    }
    _atomic_write_bytes(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    return meta
