"""After training: temperature, OOD statistics and quality ranges land in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctcovid.checkpoint import load_checkpoint
from ctcovid.cli import main
from ctcovid.data.splits import read_split
from ctcovid.errors import ConfigError
from ctcovid.predict import Predictor
from ctcovid.train.config import load_run_config
from ctcovid.train.run import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_cohort import TINY_CONFIG, make_cohort

    root = tmp_path_factory.mktemp("rel")
    manifest = make_cohort(root / "cohort", n_per_class=14)  # 10 validation scans or more
    cfg = root / "tiny.toml"
    cfg.write_text(TINY_CONFIG.format(manifest=manifest, epochs=2))
    fit(load_run_config(cfg), root / "run")
    return root / "run"


def test_training_stores_reliability_data_in_the_best_checkpoint(trained: Path) -> None:
    rel = load_checkpoint(trained / "checkpoint_best.pt")["reliability"]
    assert 0.25 <= rel["temperature"] <= 10.0
    assert 0.0 <= rel["refer_uncertainty"] <= 1.0 and "kept_at_threshold" in rel["validation"]
    assert rel["validation"]["scans"] >= 10
    assert rel["validation"]["nll_after"] <= rel["validation"]["nll_before"] + 1e-9
    means = rel["feature_density"]["means"]
    assert isinstance(means, torch.Tensor) and means.shape == (3, 512)  # r3d_10: 512 pooled features
    for method in ("mahalanobis", "energy"):
        o = rel["ood"][method]
        assert o["threshold"] >= o["median"] and o["validation_scans"] == rel["validation"]["scans"]
    ref = rel["quality_reference"]
    assert ref is not None and ref["n"] > 0  # statistics of the training scans, from the cache


def test_validation_scans_score_at_most_one_and_a_noise_volume_scores_far_above(trained: Path) -> None:
    p = Predictor.from_checkpoint(trained, quality_checks=False)
    ck = load_checkpoint(trained / "checkpoint_best.pt")
    split = read_split(trained / "split.csv")
    manifest = Path(ck["config"]["data"]["manifest"])
    val = [s for s, part in split.items() if part == "val"]
    scores = [p.predict_path(manifest.parent / f"{s}.npy").ood_score for s in val]
    assert np.mean(np.array(scores) <= 1.0) >= 0.9  # the threshold is the 95th percentile of these
    noise = np.random.default_rng(0).uniform(-1000, 1000, (10, 24, 24)).astype(np.float32)
    from ctcovid.types import Volume

    assert p.predict(Volume(noise)).ood_score > 1.0


def test_calibrate_command_adds_reliability_to_an_old_checkpoint(
    trained: Path, tmp_path: Path, capsys
) -> None:
    ck = load_checkpoint(trained / "checkpoint_best.pt")
    ck.pop("reliability")
    old = tmp_path / "old.pt"
    torch.save(ck, old)
    out = tmp_path / "new.pt"
    # the split lives beside the training run, so point at a copy of the checkpoint there
    (trained / "old.pt").write_bytes(old.read_bytes())
    assert (
        main(
            ["calibrate", str(trained / "old.pt"), "--out", str(out), "--set", "reliability.ood_quantile=0.9"]
        )
        == 0
    )
    rel = load_checkpoint(out)["reliability"]
    assert rel["ood_quantile"] == 0.9 and "mahalanobis" in rel["ood"]
    assert "temperature" in capsys.readouterr().out


def test_evaluate_reports_calibration_before_and_after_and_the_referral(
    trained: Path, tmp_path: Path
) -> None:
    assert main(["evaluate", str(trained), "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    cal, ref = m["calibration"], m["referral"]
    assert cal["fitted"] and cal["ece_before"] is not None and cal["ece_after"] is not None
    assert ref["n_scans"] == m["n_scans"] and 0.0 <= ref["rate"] <= 1.0
    assert len(ref["risk_coverage"]["coverage"]) == m["n_scans"]
    assert set(m["trust"]) == {s["scan_id"] for s in m["scans"]}
    assert (tmp_path / "ev" / "risk_coverage.png").is_file()
    assert (tmp_path / "ev" / "reliability_uncalibrated.png").is_file()


def test_a_bad_reliability_setting_fails_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nmanifest = "m.csv"\n[reliability]\nood_quantile = 1.5\n')
    with pytest.raises(ConfigError, match="reliability.ood_quantile"):
        load_run_config(cfg)


def test_the_uncertainty_threshold_keeps_the_most_certain_scans_within_the_target_risk() -> None:
    from ctcovid.train.reliability import uncertainty_threshold

    u = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ok = np.array([True, True, True, False, True, False])
    t, kept = uncertainty_threshold(u, ok, target_risk=0.05)
    assert t == pytest.approx(0.3) and kept == pytest.approx(0.5)  # the 4th scan is the first error
    assert uncertainty_threshold(u, ok, target_risk=0.25)[0] == pytest.approx(0.5)  # 1 error in 5
    assert uncertainty_threshold(u, np.ones(6, bool), 0.05) == (1.0, 1.0)  # nothing referred
    t, kept = uncertainty_threshold(u, np.zeros(6, bool), 0.05)
    assert t < 0.1 and kept == 0.0  # even the most certain is wrong: refer everything


def test_the_uncertainty_threshold_never_cuts_between_tied_scans() -> None:
    from ctcovid.train.reliability import uncertainty_threshold

    u = np.array([0.1, 0.2, 0.2, 0.3])
    ok = np.array([True, True, False, True])
    assert uncertainty_threshold(u, ok, 0.05)[0] == pytest.approx(0.1)
