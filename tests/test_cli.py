"""The command line: help texts, one-line errors with exit code 2, inspect on a synthetic scan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctcovid.cli import build_parser, main
from ctcovid.cli.train_cmds import DEMO_CONFIG
from ctcovid.config import load_toml
from repo_paths import REPO_ROOT


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "inspect", "synth", "import", "split", "preprocess", "train"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name


def test_missing_path_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ctcovid", "inspect", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_reports_geometry_and_writes_a_montage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vol = np.full((12, 32, 32), -1000, np.float32)
    vol[:, 8:24, 6:26] = 40
    np.save(tmp_path / "scan.npy", vol)
    png = tmp_path / "m.png"
    assert main(["inspect", str(tmp_path / "scan.npy"), "--json", "--png", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape_dhw"] == [12, 32, 32] and report["min"] == -1000 and report["max"] == 40
    assert png.stat().st_size > 1000


def test_demo_config_file_matches_the_built_in_demo() -> None:
    toml = load_toml(REPO_ROOT / "configs" / "demo_synthetic.toml")
    toml["data"].pop("manifest")
    assert toml == DEMO_CONFIG
