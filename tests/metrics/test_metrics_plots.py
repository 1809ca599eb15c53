"""Every plot writes a non-blank PNG; matplotlib is only imported when a plot is made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctcovid.metrics import plots
from ctcovid.metrics.metrics import expected_calibration_error

# The diagnosis paper's Tables 5 and 6 (accuracy, recall per depth and batch size).
PAPER_TABLES_5_6 = [
    (2, 8, 0.848201, 0.979645), (4, 8, 0.914688, 0.940234), (8, 8, 0.968396, 0.950355),
    (16, 8, 0.967273, 0.948007), (32, 8, 0.963604, 0.934142), (64, 8, 0.929612, 0.907801),
    (2, 32, 0.991356, 0.999134), (2, 64, 0.990013, 0.999134), (4, 32, 0.992398, 0.999567),
    (4, 64, 0.983306, 0.994371), (8, 32, 0.981503, 0.984402), (16, 32, 0.979129, 0.961005),
]  # fmt: skip


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05, f"{path.name} looks blank"


def test_each_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = ["NCP", "CP", "Normal"]
    ece, bins = expected_calibration_error(probs, y)
    history = [
        {
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.1 / (e + 1),
            "train_accuracy": 0.5 + e / 20,
            "val_accuracy": 0.4 + e / 20,
            "val_auroc": None if e == 0 else 0.7,
        }
        for e in range(6)
    ]
    rows = [{"depth": d, "batch_size": b, "accuracy": a, "recall": r} for d, b, a, r in PAPER_TABLES_5_6]
    models = [
        {"run": "r3d_18", "accuracy": 0.99, "accuracy_low": 0.97, "accuracy_high": 1.0, "recall": None},
        {"run": "r3d_34", "accuracy": 0.98, "recall": 0.97},
    ]
    written = [
        plots.plot_confusion([[17, 2, 1], [3, 15, 2], [0, 0, 0]], labels, tmp_path / "cm.png"),
        plots.plot_roc(probs, y, labels, tmp_path / "roc.png"),
        plots.plot_reliability(bins, ece, tmp_path / "rel.png"),
        plots.plot_training_curves(history, tmp_path / "curves.png"),
        plots.plot_metric_lines(
            rows,
            x="depth",
            series="batch_size",
            metrics=["accuracy", "recall"],
            path=tmp_path / "fig4.png",
            log2_x=True,
        ),
        plots.plot_metric_bars(
            models, name="run", metrics=["accuracy", "recall"], path=tmp_path / "bars.png"
        ),
    ]
    for path in written:
        _assert_png(path)


def test_roc_skips_classes_without_positives(tmp_path: Path) -> None:
    probs = np.full((4, 3), 1 / 3)
    path = plots.plot_roc(probs, np.zeros(4, dtype=int), ["a", "b", "c"], tmp_path / "roc.png")
    assert path.is_file()


@pytest.mark.parametrize("module", ["ctcovid.metrics", "ctcovid.metrics.plots"])
def test_import_does_not_load_matplotlib(module: str) -> None:
    code = f"import sys, {module}; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
