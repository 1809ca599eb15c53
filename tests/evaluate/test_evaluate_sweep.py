"""Sweeps: validation before any training, and the shipped tiny sweep end to end (2 x 2, 1 epoch)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ctcovid.cli import main
from ctcovid.errors import ConfigError
from ctcovid.evaluate.sweep import Sweep, load_sweep, run_state, run_sweep
from ctcovid.train.run import fit
from tiny_cohort import make_cohort

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "configs" / "sweeps"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("sweep") / "cohort", n_per_class=4)


@pytest.mark.parametrize(
    "name",
    ["diagnosis_depth_batch", "diagnosis_models", "severity_models", "severity_ordinal", "tiny_synthetic"],
)
def test_shipped_sweeps_load_and_validate_every_run(name: str, manifest: Path) -> None:
    sweep = load_sweep(SWEEPS / f"{name}.toml", [f"data.manifest={manifest}"])
    expected = {
        "diagnosis_depth_batch": 18,
        "diagnosis_models": 5,
        "severity_models": 4,
        "severity_ordinal": 6,
        "tiny_synthetic": 4,
    }
    assert len(sweep.runs) == expected[name]
    if name == "severity_ordinal":  # 2 heads x 3 seeds, one split
        assert sweep.runs[3].name == "head-corn_seed-0"
        assert sweep.runs[3].config.model.kwargs == {"head": "corn"} and sweep.runs[3].config.train.seed == 0
    if name == "severity_models":
        vote = next(r for r in sweep.runs if r.name == "resnet50_2d_vote")
        assert vote.evaluate.aggregate == "majority" and vote.config.preprocess.chunk_depth == 1
        assert next(r for r in sweep.runs if r.name == "ct_s152").evaluate.aggregate == "mean"
    if name == "diagnosis_depth_batch":
        assert sweep.runs[0].name == "chunk_depth-2_batch_size-8"
        assert sweep.runs[0].config.preprocess.chunk_depth == 2 and sweep.runs[0].config.train.batch_size == 8


def _write(tmp_path: Path, body: str) -> Path:
    base = tmp_path / "base.toml"
    base.write_text('[data]\nmanifest = "m.csv"\n[model]\nname = "r3d_10"\n')
    p = tmp_path / "sweep.toml"
    p.write_text('base = "base.toml"\n' + body)
    return p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('tabel = "models"\n', "unknown key(s) ['tabel']; valid: base, evaluate, grid, runs, set, table"),
        ('table = "fig4"\n', "table 'fig4' is not one of depth_batch, models, severity"),
        ('[grid]\n"train.batch_size" = []\n', "grid['train.batch_size'] must be a non-empty list"),
        ('[grid]\n"training.lr" = [1]\n', "key 'training.lr' must be 'section.key' with section one of"),
        ('[grid]\n"model.name" = ["r3d_19"]\n', "run 'r3d_19': model.name: unknown model 'r3d_19'"),
        (
            '[evaluate]\npositive = "COVID"\n',
            "evaluate.positive 'COVID' is not a label; use one of NCP, CP, Normal",
        ),
        (
            '[evaluate]\nlevel = "volume"\n',
            "evaluate.level: 'volume' is not one of 'chunk', 'scan', 'patient'",
        ),
    ],
)
def test_bad_sweep_files_fail_naming_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_sweep(_write(tmp_path, body))
    assert message in str(e.value)


def test_runs_times_grid_and_per_run_evaluation(tmp_path: Path) -> None:
    body = (
        '[grid]\n"train.lr" = [0.1, 0.01]\n'
        '[runs.a]\n"model.name" = "r3d_18"\n[runs.b]\n"evaluate.aggregate" = "majority"\n'
    )
    sweep = load_sweep(_write(tmp_path, body), ["evaluate.n_resamples=10"])
    assert [r.name for r in sweep.runs] == ["a_0.1", "a_0.01", "b_0.1", "b_0.01"]
    assert [r.evaluate.aggregate for r in sweep.runs] == ["mean", "mean", "majority", "majority"]
    assert {r.evaluate.n_resamples for r in sweep.runs} == {10}
    assert sweep.runs[0].config.model.name == "r3d_18" and sweep.runs[2].config.model.name == "r3d_10"


def test_tiny_sweep_end_to_end_table_csv_plots_and_resume(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    # Per-run reports are tested in test_evaluate_report.py; here metrics.json suffices and is faster.
    sets = [f"data.manifest={manifest}", "evaluate.report=false"]
    args = [
        "sweep",
        str(SWEEPS / "tiny_synthetic.toml"),
        "--set",
        sets[0],
        "--set",
        sets[1],
        "--out",
        str(out),
    ]
    assert main(args) == 0
    for name in (
        "table.md",
        "table.html",
        "table.csv",
        "metrics_vs_depth.png",
        "metrics_vs_batch.png",
        "sweep.json",
    ):
        assert (out / name).is_file(), name
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((int(r["depth"]), int(r["batch_size"])) for r in rows) == [(2, 8), (2, 16), (4, 8), (4, 16)]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and r["binary_of"] == "NCP" for r in rows)
    md = (out / "table.md").read_text()
    assert "| Depth | Batch size | Accuracy | NCP recall |" in md and "depth \\ batch" in md
    assert (out / "table.html").read_text().count("data:image/png;base64,") == 2
    run = out / "chunk_depth-4_batch_size-16"
    assert (run / "eval_test" / "metrics.json").is_file()

    # Re-running skips finished runs; a run whose evaluation is missing is only evaluated.
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already") == 4 and "training" not in printed
    sweep = load_sweep(SWEEPS / "tiny_synthetic.toml", sets)
    assert {run_state(r, out / r.name) for r in sweep.runs} == {"done"}
    shutil.rmtree(run / "eval_test")
    assert run_state(sweep.runs[-1], run) == "trained"

    # Another config into the same folder is refused rather than silently mixed.
    changed = load_sweep(SWEEPS / "tiny_synthetic.toml", [f"data.manifest={manifest}", "train.lr=0.5"])
    with pytest.raises(ConfigError, match=r"was trained with another config \(differs in train.lr\)"):
        run_state(changed.runs[0], out / changed.runs[0].name)
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["table"] == "depth_batch" and len(summary["rows"]) == 4


def test_an_interrupted_run_is_resumed(manifest: Path, tmp_path: Path) -> None:
    sweep = load_sweep(
        SWEEPS / "tiny_synthetic.toml",
        [f"data.manifest={manifest}", "train.epochs=2", "evaluate.n_resamples=20", "evaluate.report=false"],
    )
    run = sweep.runs[-1]  # depth 4, batch 16: the quickest
    one_epoch = dataclasses.replace(run.config, train=dataclasses.replace(run.config.train, epochs=1))
    fit(one_epoch, tmp_path / run.name, config_dict=run.config_dict)  # as if killed after epoch 1 of 2
    assert run_state(run, tmp_path / run.name) == "partial"
    rows = run_sweep(Sweep(sweep.path, sweep.base, sweep.table, sweep.grid, [run]), tmp_path)
    assert len(rows) == 1 and run_state(run, tmp_path / run.name) == "done"
    assert not (tmp_path / run.name / "eval_test" / "report.html").exists()  # evaluate.report = false
    history = (tmp_path / run.name / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in history] == [0, 1]
