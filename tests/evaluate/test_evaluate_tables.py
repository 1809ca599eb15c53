"""The papers' table layouts from evaluation results (no training: results made from probabilities)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ctcovid.evaluate.report import evaluate_predictions
from ctcovid.evaluate.sweep import load_sweep, run_settings
from ctcovid.evaluate.tables import run_row, write_tables
from tiny_cohort import make_cohort

REPO = Path(__file__).resolve().parents[2]


def _result(labels: list[str], noise: float, positive: str | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(60) % 3
    logits = 3.0 * np.eye(3)[y] + rng.normal(0, noise, (60, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = [f"s{i}" for i in range(60)]
    return evaluate_predictions(
        probs, y, ids, ids, labels, positive=positive, ordinal=positive is None, n_resamples=50
    )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("tables") / "cohort", n_per_class=2)


def test_models_table_is_table_7(manifest: Path, tmp_path: Path) -> None:
    sweep = load_sweep(REPO / "configs/sweeps/diagnosis_models.toml", [f"data.manifest={manifest}"])
    runs = [replace(r, evaluate=replace(r.evaluate, level="scan")) for r in sweep.runs]  # with CIs
    rows = [
        run_row(run_settings(r), _result(["NCP", "CP", "Normal"], 1 + i, "NCP", i), r.evaluate.level)
        for i, r in enumerate(runs)
    ]
    written = write_tables(
        rows, tmp_path, table=sweep.table, name=sweep.path.stem, base=str(sweep.base), grid=list(sweep.grid)
    )
    md = written["md"].read_text()
    assert "| Model | Accuracy | NCP precision | NCP recall | NCP F1 | AUROC |" in md
    assert "| r2plus1d_18 | 0.8333 [0.7242, 0.9296] |" in md  # value [CI]
    with written["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["r3d_18", "r2plus1d_18", "r3d_34", "r2plus1d_34", "r3d_50"]
    assert written["bars"].is_file()


def test_severity_table_is_table_1_with_the_best_confusion_matrix(manifest: Path, tmp_path: Path) -> None:
    sweep = load_sweep(REPO / "configs/sweeps/severity_models.toml", [f"data.manifest={manifest}"])
    labels = ["low", "medium", "high"]
    rows = [
        run_row(run_settings(r), _result(labels, [1.5, 2.0, 2.5, 4.0][i], None, i), r.evaluate.level)
        for i, r in enumerate(sweep.runs)
    ]
    written = write_tables(
        rows, tmp_path, table=sweep.table, name=sweep.path.stem, base=str(sweep.base), grid=list(sweep.grid)
    )
    md = written["md"].read_text()
    assert "| Model | Accuracy | Macro F1 | Quadratic kappa | MAE (grades) |" in md
    assert "Confusion matrix of the best run, ct_s152 (row-normalized; rows = truth)" in md
    assert "| true \\ predicted | low | medium | high |" in md
    assert written["best_confusion"].is_file() and written["bars"].is_file()
