"""The preprocessing cache survives a SIGKILL: finished entries are kept, torn ones rebuilt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctcovid.data.cache import PreprocessCache
from ctcovid.data.manifest import read_manifest
from ctcovid.preprocess.pipeline import PreprocessConfig
from tiny_cohort import TINY_CONFIG, make_cohort


def _cache(manifest: Path) -> PreprocessCache:
    cfg = PreprocessConfig(depth_mode="uniformize", depth=8, size_hw=(24, 24), body_crop=False)
    return PreprocessCache(manifest.parent / ".ctcovid_cache", cfg, manifest.parent)


def test_entries_are_reused_and_rebuilt_when_the_source_changes(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "c", n_per_class=2)
    rows = read_manifest(manifest)
    cache = _cache(manifest)
    assert cache.build(rows) == 6 and cache.build(rows) == 0
    a = np.array(cache.load(rows[0]))
    assert a.shape == (1, 8, 24, 24) and a.min() >= 0 and a.max() <= 1
    src = rows[0].resolve(manifest.parent)
    np.save(src, np.full((10, 24, 24), -1000, np.float32))
    os.utime(src, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert cache.missing(rows) == [rows[0]]
    new = np.array(cache.load(rows[0]))
    assert np.ptp(new) < 1e-6 and np.isclose(new.max(), 350 / 1500)  # uniform air (-1000 HU) after the change


def test_torn_entry_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "c", n_per_class=1)
    rows = read_manifest(manifest)
    cache = _cache(manifest)
    cache.build(rows)
    npy, meta = cache.paths(rows[1])
    npy.write_bytes(npy.read_bytes()[:100])  # a torn array...
    meta.unlink()  # ...never has its .json (written last)
    assert cache.missing(rows) == [rows[1]]
    assert cache.build(rows) == 1 and cache.load(rows[1]).shape == (1, 8, 24, 24)


def test_sigkill_during_preprocess_then_rerun_completes_without_rebuilding(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "c", n_per_class=20, shape=(30, 64, 64))
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        TINY_CONFIG.format(manifest=manifest, epochs=1).replace("body_crop = false", "body_crop = true")
    )
    cmd = [sys.executable, "-m", "ctcovid", "preprocess", str(cfg), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache_root = manifest.parent / ".ctcovid_cache"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache_root.glob("*/*.json"))) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in cache_root.glob("*/*.json") if p.name != "config.json"}
    assert 0 < len(done) < 60, "preprocess finished before the kill; enlarge the cohort"
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert f"{60 - len(done)} built now, {len(done)} already there" in out
    for p, mtime in done.items():
        assert p.stat().st_mtime_ns == mtime  # finished entries untouched
    for p in cache_root.glob("*/*.json"):
        if p.name != "config.json":
            shape = json.loads(p.read_text())["shape"]
            assert np.load(p.with_suffix(".npy"), mmap_mode="r").shape == tuple(shape)
