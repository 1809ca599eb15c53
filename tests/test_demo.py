"""`ctcovid demo` end to end on a very small cohort: generate, import, split, train, evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctcovid.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--n",
            "15",
            "--set",
            "train.epochs=1",
            "--set",
            "preprocess.size_hw=[32, 32]",
            "--set",
            "preprocess.depth=8",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "found 15 scans: imported 15, skipped 0" in text
    assert "test scans:" in text and "demo finished" in text
    assert "(95 % patient bootstrap)" in text  # the accuracy comes with its interval
    assert "calibration:" in text and "referral:" in text
    montage = out / "run" / "eval_test" / "covid_example_montage.png"
    if any(
        s["label"] == "NCP"
        for s in json.loads((out / "run" / "eval_test" / "metrics.json").read_text())["scans"]
    ):
        assert f"explanation montage: {montage}" in text  # a held-out COVID-19 scan, explained
        assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "run" / "eval_test" / "metrics.json").read_text())
    assert metrics["scan"]["n"] == metrics["n_scans"] >= 3
    assert (out / "run" / "eval_test" / "report.html").stat().st_size > 1000
