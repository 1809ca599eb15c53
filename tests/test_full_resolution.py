"""The papers' full-resolution data path, end to end as a user runs it from the README.

import -> split -> preprocess -> train (1 epoch) -> evaluate -> predict on synthetic scans at the
size of real CT (512 x 512 slices), with each recipe's real preprocessing:

* diagnosis (``configs/diagnosis_cc-ccii.toml``): CC-CCII PNG layout, depth-4 chunks, 3 channels,
  512 x 512, r3d_18; batch 2 instead of 32 and few slices a scan, so it fits CI's two cores;
* severity (``configs/severity_cncb_ct-s152.toml``): CNCB DICOM layout, depth 40 by spline,
  256 x 256, body crop with a 20 mm margin, class-uniform batches; the network is r3d_10 instead
  of CT-S152 (a CT-S152 step at 3 x 1 x 40 x 256 x 256 takes ~25 s on a Zen 5 core pair; the
  model zoo tests cover CT-S itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctcovid.cli import main
from ctcovid.data.manifest import read_manifest
from repo_paths import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(args: list[str]) -> None:
    assert main(args) == 0, args


def _cache_entries(manifest: Path) -> list[Path]:
    return sorted((manifest.parent / ".ctcovid_cache").glob("*/*.npy"))


def test_diagnosis_recipe_at_512_by_512_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, manifest, run = tmp_path / "CC-CCII", tmp_path / "CC-CCII" / "manifest.csv", tmp_path / "run"
    _run(["synth", str(root), "--n", "9", "--format", "png", "--slices", "16", "16", "--size", "512",
          "--scans-per-patient", "1", "1", "--seed", "3"])  # fmt: skip
    _run(["import", "cc-ccii", str(root), "-o", str(manifest)])
    _run(["split", str(manifest), "--val", "0.34", "--test", "0.34", "--seed", "0"])
    sets = [f"data.manifest={manifest}", "train.epochs=1", "train.batch_size=2"]
    config = str(REPO_ROOT / "configs" / "diagnosis_cc-ccii.toml")
    _run(["preprocess", config, *(a for s in sets for a in ("--set", s))])
    entries = _cache_entries(manifest)
    assert len(entries) == 9
    for e in entries:  # 8-bit PNG slices: one byte a voxel for the three channels
        stored = np.load(e, mmap_mode="r")
        assert stored.dtype == np.uint8 and stored.shape == (1, 16, 512, 512)
        assert e.stat().st_size == 16 * 512 * 512 + 128
    _run(["train", config, *(a for s in sets for a in ("--set", s)), "--out", str(run)])
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"]) and hist[0]["val_scans"] == 3
    _run(["evaluate", str(run), "--split", "test", "--bootstrap", "20"])
    m = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert m["n_scans"] == 3 and m["n_chunks"] == 12 and m["excluded"]["count"] == 0  # 16 slices: 4 chunks
    scan = next(r for r in read_manifest(manifest) if r.label == "NCP").resolve(root)
    _run(["predict", str(scan), "--checkpoint", str(run), "--json", str(tmp_path / "p.json")])
    (pred,) = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert pred["error"] is None and pred["n_chunks"] == 4
    assert abs(sum(pred["probs"].values()) - 1) < 1e-6
    capsys.readouterr()


def test_severity_recipe_at_depth_40_by_256_end_to_end(tmp_path: Path) -> None:
    root, manifest, run = tmp_path / "CNCB", tmp_path / "CNCB" / "manifest.csv", tmp_path / "run"
    _run(["synth", str(root), "--n", "9", "--task", "severity", "--format", "dicom", "--slices", "30", "30",
          "--size", "512", "--scans-per-patient", "1", "1", "--seed", "1"])  # fmt: skip
    _run(["import", "cncb-severity", str(root), "-o", str(manifest)])
    rows = read_manifest(manifest)
    assert len(rows) == 9
    sets = [f"data.manifest={manifest}", "train.epochs=1", "train.batch_size=3", "model.name=r3d_10",
            "data.val=0.34", "data.test=0.34"]  # fmt: skip
    config = str(REPO_ROOT / "configs" / "severity_cncb_ct-s152.toml")
    _run(["train", config, *(a for s in sets for a in ("--set", s)), "--out", str(run)])
    entries = _cache_entries(manifest)
    assert entries
    for e in entries:  # HU, one window: 2 bytes a voxel at the recipe's depth and size
        stored = np.load(e, mmap_mode="r")
        assert stored.dtype == np.uint16 and stored.shape == (1, 40, 256, 256)
        assert e.stat().st_size == 40 * 256 * 256 * 2 + 128
    _run(["evaluate", str(run), "--split", "test", "--bootstrap", "20"])
    m = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert m["labels"] == ["low", "medium", "high"] and m["n_scans"] >= 1 and m["ordinal"] is True
    scan = rows[0].resolve(root)
    _run(["predict", str(scan), "--checkpoint", str(run), "--json", str(tmp_path / "p.json")])
    (pred,) = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert pred["error"] is None and pred["severity"] in ("low", "medium", "high")
