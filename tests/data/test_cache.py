"""The preprocessing cache survives a SIGKILL: finished entries are kept, torn ones rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctcovid.cli import main
from ctcovid.data.cache import CacheFullError, PreprocessCache
from ctcovid.data.manifest import read_manifest
from ctcovid.io import load_volume
from ctcovid.preprocess.pipeline import PreprocessConfig, build_pipeline
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
    # Uniform air (-1000 HU) after the change: 350/1500 of the window sits on a half step of the
    # uint16 storage, so float noise of the z-resampling may round either way (one step apart).
    assert np.ptp(new) <= 1.01 / 65535 and abs(new.max() - 350 / 1500) <= 1 / 65535


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


# ------------------------------------------------------------------ compact storage (issue 14)
def _build(tmp_path: Path, cfg: PreprocessConfig, n_per_class: int = 1) -> tuple[PreprocessCache, list]:
    manifest = make_cohort(tmp_path / "c", n_per_class=n_per_class)
    rows = read_manifest(manifest)
    cache = PreprocessCache(tmp_path / "cache", cfg, manifest.parent)
    cache.build(rows)
    return cache, rows


@pytest.mark.parametrize(
    ("windows", "channels", "bytes_per_voxel"),
    [
        ([[-600, 1500]], 1, 2),
        ([[-600, 1500]], 3, 2),  # three replicated channels: stored once
        ([[-600, 1500], [40, 400]], 2, 4),
        ([[-600, 1500], [40, 400], [-600, 1500]], 3, 4),  # a repeated window is stored once
    ],
)
def test_the_cache_stores_one_16_bit_plane_per_distinct_window_and_decodes_to_the_pipeline_bit_exact(
    tmp_path: Path, windows: list, channels: int, bytes_per_voxel: int
) -> None:
    cfg = PreprocessConfig(
        windows_hu=windows, in_channels=channels, depth_mode="stack", size_hw=(24, 24), body_crop=False
    )
    cache, rows = _build(tmp_path, cfg)
    for row in rows:
        want = build_pipeline(cfg).process(load_volume(row.resolve(cache.scans_root))).array
        got = cache.load(row)
        assert got.shape == want.shape == (channels, 10, 24, 24)
        np.testing.assert_array_equal(got.read(), want)  # bit-exact
        np.testing.assert_array_equal(got.read(3, 7), want[:, 3:7])  # a chunk reads only its slices
        size = cache.paths(row)[0].stat().st_size
        assert size == 10 * 24 * 24 * bytes_per_voxel + 128  # .npy header
        assert size == cache.entry_bytes(row, 10)  # the estimate is the real size


def test_an_8_bit_slice_scan_is_stored_in_one_byte_a_voxel_for_three_channels(tmp_path: Path) -> None:
    from ctcovid.data.manifest import ManifestRow, write_manifest
    from ctcovid.io import write_slices
    from ctcovid.types import Volume

    rng = np.random.default_rng(0)
    hu = rng.normal(-600, 400, (12, 32, 32)).astype(np.float32)
    write_slices(Volume(hu), tmp_path / "s" / "scan", window_hu=(-600, 1500))
    manifest = write_manifest(
        [ManifestRow("scan", "p", "s/scan", "NCP", format="slices", n_slices=12)], tmp_path / "m.csv"
    )
    cfg = PreprocessConfig(in_channels=3, depth_mode="stack", size_hw=(32, 32), body_crop=False)
    rows = read_manifest(manifest)
    cache = PreprocessCache(tmp_path / "cache", cfg, tmp_path)
    cache.build(rows)
    stored = np.load(cache.paths(rows[0])[0])
    assert stored.dtype == np.uint8 and stored.shape == (1, 12, 32, 32)
    assert cache.paths(rows[0])[0].stat().st_size == 12 * 32 * 32 + 128 == cache.entry_bytes(rows[0], 12)
    got = cache.load(rows[0]).read()
    # Same size in and out: no interpolation, so the 8-bit levels come back exactly as /255.
    want = np.array(load_volume(tmp_path / "s" / "scan").voxels, dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(got, np.repeat(want[None], 3, axis=0))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    windows=st.lists(st.tuples(st.floats(-1200, 400), st.floats(50, 3000)), min_size=1, max_size=3),
)
def test_stored_hu_values_are_within_half_a_16_bit_step_of_the_float_window(
    seed: int, windows: list[tuple[float, float]]
) -> None:
    from ctcovid.preprocess.intensity import encode_channels, to_channels
    from ctcovid.types import Units

    v = np.random.default_rng(seed).normal(-500, 600, (3, 8, 8)).astype(np.float32)
    planes, enc = encode_channels(v, Units.HU, windows)
    assert planes.dtype == np.uint16 and planes.shape[0] == len(set(windows))
    diff = np.abs(enc.decode(planes) - to_channels(v, Units.HU, windows))
    assert diff.max() <= 0.5 / 65535 + 1e-7


def test_display_values_between_8_bit_levels_are_rounded_to_the_source_levels() -> None:
    from ctcovid.preprocess.intensity import encode_channels, to_channels
    from ctcovid.types import Units

    v = np.linspace(-3, 260, 1000, dtype=np.float32).reshape(10, 10, 10)
    planes, enc = encode_channels(v, Units.DISPLAY, in_channels=3)
    assert planes.dtype == np.uint8 and planes.shape == (1, 10, 10, 10)
    diff = np.abs(enc.decode(planes) - to_channels(v, Units.DISPLAY, in_channels=3))
    assert diff.max() <= 0.5 / 255 + 1e-7
    ints = np.arange(256, dtype=np.float32).reshape(4, 8, 8)
    p, e = encode_channels(ints, Units.DISPLAY)
    np.testing.assert_array_equal(e.decode(p)[0], ints / np.float32(255))


def test_an_entry_of_the_old_float32_format_is_never_read(tmp_path: Path) -> None:
    cfg = PreprocessConfig(depth=8, size_hw=(24, 24), body_crop=False)
    cache, rows = _build(tmp_path, cfg)
    npy, meta_path = cache.paths(rows[0])
    old = json.loads(meta_path.read_text())
    for key in ("encoding", "stored_shape"):
        old.pop(key)
    np.save(npy, np.zeros((1, 8, 24, 24), np.float32))  # what format 1 wrote
    meta_path.write_text(json.dumps(old))
    assert cache.missing(rows) == [rows[0]]
    assert cache.load(rows[0]).planes.dtype == np.uint16  # rebuilt, not misread
    assert cache.dir.name != _format1_hash(cfg)


def _format1_hash(cfg: PreprocessConfig) -> str:
    import hashlib

    d = cfg.to_dict()
    d.pop("augment")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_a_cache_that_will_not_fit_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctcovid.data import cache as cache_mod

    manifest = make_cohort(tmp_path / "c", n_per_class=2)
    rows = read_manifest(manifest)
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(depth=8, size_hw=(24, 24)), manifest.parent)
    plan = cache.plan(rows)
    assert plan.n_missing == 6 and plan.total_bytes == 6 * (8 * 24 * 24 * 2 + 128)
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: real._replace(free=plan.total_bytes // 2))
    with pytest.raises(
        CacheFullError, match=r"will not fit: cache .*6 scans need 56\.1 KB.*--ignore-disk-space"
    ):
        cache.check_space(rows)
    assert not list(cache.dir.glob("*.npy"))
    # The CLI says the same in one line and exits 2 before writing.
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text(TINY_CONFIG.format(manifest=manifest, epochs=1))
    assert main(["preprocess", str(cfg_file)]) == 2
    assert not list((manifest.parent / ".ctcovid_cache").glob("*/*.npy"))


def test_a_disk_that_fills_up_leaves_no_torn_entry_and_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    manifest = make_cohort(tmp_path / "c", n_per_class=1)
    rows = read_manifest(manifest)
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(depth=8, size_hw=(24, 24)), manifest.parent)
    cache.build(rows[:1])
    real_save = np.save

    def full(f, arr, *a, **k):
        real_save(f, arr[:, :1], *a, **k)  # part of it reaches the disk, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(CacheFullError, match=rf"no space left on the disk of the cache folder {cache.dir}"):
        cache.build(rows)
    monkeypatch.undo()
    leftovers = sorted(p.name for p in cache.dir.iterdir())
    assert leftovers == sorted(["config.json", *(p.name for p in cache.paths(rows[0]))])
    assert cache.missing(rows) == rows[1:]  # the finished entry is kept, the rest is built next time
