"""ctcovid compare: side-by-side metrics and paired tests on the same scans (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctcovid.cli import main
from ctcovid.errors import ConfigError
from ctcovid.evaluate.compare import compare_evaluations, comparison_document, load_evaluation
from ctcovid.evaluate.report import evaluate_predictions

LABELS = ["NCP", "CP", "Normal"]


def _evaluation(noise: float, n: int = 90, seed: int = 0, drop: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = 3.0 * np.eye(3)[y] + rng.normal(0, noise, (n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scans = [f"s{i}" for i in range(n)]
    patients = [f"p{i // 2}" for i in range(n)]
    keep = slice(drop, None)
    ev = evaluate_predictions(
        probs[keep], y[keep], scans[keep], patients[keep], LABELS, positive="NCP", n_resamples=100
    )
    return {**ev, "model": f"noise{noise}", "checkpoint": f"/runs/noise{noise}/checkpoint_best.pt"}


def test_a_better_model_is_significantly_better_and_itself_is_not() -> None:
    good, bad = _evaluation(1.0), _evaluation(6.0, seed=1)
    c = compare_evaluations([good, bad, good], ["good", "bad", "good2"], n_resamples=500)
    assert c["n"] == 90 and len(c["pairs"]) == 3
    gb = c["pairs"][0]
    assert (gb["a"], gb["b"]) == ("good", "bad")
    assert gb["accuracy"]["diff"] > 0.2 and gb["accuracy"]["p_value"] < 0.01
    assert gb["auroc"]["NCP"]["diff"] > 0 and gb["auroc"]["NCP"]["p_value"] < 0.01
    same = c["pairs"][1]  # good vs good2
    assert same["accuracy"]["p_value"] == 1.0 and same["auroc"]["CP"]["p_value"] == 1.0
    md = comparison_document(c).markdown(Path("."))
    assert "| good - bad | accuracy |" in md and "AUROC NCP vs rest" in md


def test_patient_level_comparison_averages_scans_per_patient() -> None:
    c = compare_evaluations([_evaluation(1.0), _evaluation(2.0)], ["a", "b"], level="patient", n_resamples=50)
    assert c["n"] == 45


def test_runs_on_different_scans_are_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"evaluated on different scans \(3 only in the first, 0 only in 'b'\)"
    ):
        compare_evaluations([_evaluation(1.0), _evaluation(1.0, drop=3)], ["a", "b"])
    with pytest.raises(ConfigError, match="at least two runs"):
        compare_evaluations([_evaluation(1.0)], ["a"])


def test_cli_compare_reads_run_folders_and_writes_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, noise in (("run_a", 1.0), ("run_b", 4.0)):
        (tmp_path / name / "eval_test").mkdir(parents=True)
        (tmp_path / name / "eval_test" / "metrics.json").write_text(json.dumps(_evaluation(noise)))
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(tmp_path / "run_a"),
                str(tmp_path / "run_b"),
                "--out",
                str(out),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| run_a - run_b | accuracy |" in printed and "| run_a | noise1.0 |" in printed
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.html", "compare.json"}


def test_load_evaluation_explains_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no eval_test/metrics.json and no checkpoint"):
        load_evaluation(tmp_path)


def test_paired_accuracy_decides_each_run_by_its_recorded_rule() -> None:
    from ctcovid.metrics.metrics import decide

    ev = _evaluation(2.0)
    ordinal = {**ev, "scan": {**ev["scan"], "decision": "median"}}  # as an ordinal head records it
    c = compare_evaluations([ordinal, ev], ["median", "argmax"], n_resamples=50)
    labels = ev["labels"]
    scans = sorted(ev["scans"], key=lambda s: s["scan_id"])
    probs = np.array([s["probs"] for s in scans])
    y = np.array([labels.index(s["label"]) for s in scans])
    want = (decide(probs, "median") == y).mean() - (decide(probs, "argmax") == y).mean()
    assert want != 0  # the fixture tells the rules apart
    assert c["pairs"][0]["accuracy"]["diff"] == pytest.approx(want)
