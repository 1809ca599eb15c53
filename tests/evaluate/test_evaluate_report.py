"""ctcovid evaluate: a trained tiny run -> metrics at three levels, CIs, report.md/.html and plots."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ctcovid.cli import main
from ctcovid.errors import ConfigError, ManifestError
from ctcovid.evaluate.report import evaluate_checkpoint, evaluate_predictions
from ctcovid.train.config import load_run_config
from ctcovid.train.run import fit
from tiny_cohort import TINY_CONFIG, make_cohort


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch r3d_10 on depth-4 chunks of a 6-per-class cohort with a test split."""
    root = tmp_path_factory.mktemp("report")
    manifest = make_cohort(root / "cohort", n_per_class=6)
    text = TINY_CONFIG.format(manifest=manifest, epochs=1).replace("test = 0.0", "test = 0.25")
    text = text.replace(
        'depth_mode = "uniformize"', 'depth_mode = "stack"\nchunk_depth = 4\nchunk_short = "drop"'
    )
    (root / "tiny.toml").write_text(text)
    fit(load_run_config(root / "tiny.toml"), root / "run")
    return root / "run"


def test_evaluate_writes_metrics_report_and_plots(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run_dir), "--bootstrap", "200"]) == 0
    out = run_dir / "eval_test"
    for name in (
        "metrics.json",
        "report.md",
        "report.html",
        "confusion_scan.png",
        "confusion_patient.png",
        "roc_scan.png",
        "reliability_scan.png",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["split_file"] == str(run_dir / "split.csv")  # the split training used
    assert m["n_scans"] == 6 and m["n_chunks"] == 18  # 10 slices -> chunks [0,4) [4,8) [6,10)
    for level in ("chunk", "scan", "patient"):
        assert {"accuracy", "f1_macro", "auroc", "per_class", "confusion", "binary", "ece"} <= set(m[level])
    assert m["positive"] == "NCP" and m["ci"]["scan"]["accuracy"]["n_defined"] == 200
    assert len(m["scans"]) == 6 and {"scan_id", "patient_id", "label", "pred", "probs"} <= set(m["scans"][0])
    html = (out / "report.html").read_text()
    # confusion x2, ROC, reliability before/after temperature scaling, risk-coverage, training curves
    assert html.count("data:image/png;base64,") == 7
    md = (out / "report.md").read_text()
    assert "| accuracy |" in md and "![ROC curves" in md and "rows = truth" in md
    printed = capsys.readouterr().out
    assert "scan     accuracy" in printed and "report.html" in printed


def test_short_scans_are_never_dropped_silently_from_evaluation(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (issue 18.5): with chunk_short='drop' scans shorter than chunk_depth vanished
    from the test metrics and their CIs without a word."""
    from ctcovid.data.manifest import read_manifest, write_manifest

    full = read_manifest(make_cohort(tmp_path / "full", n_per_class=2))
    short = read_manifest(make_cohort(tmp_path / "short", n_per_class=1, shape=(3, 24, 24)))
    rows = [dataclasses.replace(r, path=str(tmp_path / "full" / r.path)) for r in full]
    rows += [
        dataclasses.replace(
            r,
            scan_id=f"short_{r.scan_id}",
            patient_id=f"short_{r.patient_id}",
            path=str(tmp_path / "short" / r.path),
        )
        for r in short
    ]
    manifest = write_manifest(rows, tmp_path / "mixed.csv")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--manifest",
                str(manifest),
                "--split",
                "all",
                "--bootstrap",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_scans"] == 6 and m["excluded"]["count"] == 3
    assert {e["scan_id"] for e in m["excluded"]["scans"]} == {"short_NCP_0", "short_CP_0", "short_Normal_0"}
    assert "3 slices after preprocessing, fewer than chunk_depth=4" in m["excluded"]["scans"][0]["reason"]
    assert "Excluded scans" in (out / "report.md").read_text()
    assert "excluded 3 scan(s)" in capsys.readouterr().out
    # A split of short scans only is an error with the reason, not an empty report.
    only_short = write_manifest(rows[6:], tmp_path / "short.csv")
    with pytest.raises(ManifestError, match="none of the 3 scans .* gives a model input: 3 slices"):
        evaluate_checkpoint(run_dir, only_short, split="all", n_resamples=0)


def test_majority_aggregation_and_out_folder(run_dir: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "evaluate",
                str(run_dir / "checkpoint_last.pt"),
                "--aggregate",
                "majority",
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["aggregate"] == "majority" and "scan" not in m["ci"]
    for s in m["scans"]:
        np.testing.assert_allclose(sum(s["probs"]), 1.0, atol=1e-5)


def test_evaluate_other_splits_and_errors(run_dir: Path) -> None:
    r = evaluate_checkpoint(run_dir, split="val", n_resamples=0)
    assert r["n_scans"] == 3
    with pytest.raises(ConfigError, match="aggregate 'vote' is not one of mean, majority"):
        evaluate_checkpoint(run_dir, aggregate="vote")
    with pytest.raises(
        ConfigError, match=r"positive class 'COVID' is not one of the labels \['NCP', 'CP', 'Normal'\]"
    ):
        evaluate_checkpoint(run_dir, positive="COVID", n_resamples=0)


def test_evaluate_predictions_aggregates_chunks_then_patients() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    r = evaluate_predictions(
        probs,
        np.array([0, 0, 1, 1]),
        ["s1", "s1", "s2", "s3"],
        ["p1", "p1", "p2", "p2"],
        ["a", "b"],
        n_resamples=50,
    )
    assert (r["n_chunks"], r["n_scans"], r["n_patients"]) == (4, 3, 2)
    assert r["scans"][0]["probs"] == [0.55, 0.45]
    assert r["patient"]["n"] == 2
    assert r["scan"]["auroc"] is not None and r["positive"] is None and "binary" not in r["scan"]


def test_an_ordinal_decision_reads_each_scan_by_its_median() -> None:
    from ctcovid.evaluate.report import evaluate_predictions

    probs = np.array([[0.45, 0.1, 0.45], [0.2, 0.7, 0.1]])  # argmax: low; median: medium
    out = evaluate_predictions(
        probs, np.array([1, 1]), ["a", "b"], ["p", "q"], ["low", "medium", "high"],
        ordinal=True, n_resamples=0, decision="median",
    )  # fmt: skip
    assert [s["pred"] for s in out["scans"]] == ["medium", "medium"]
    assert out["scan"]["accuracy"] == 1.0 and out["scan"]["mae"] == 0.0 and out["decision"] == "median"
