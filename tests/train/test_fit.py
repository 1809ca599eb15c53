from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctcovid.checkpoint import load_checkpoint, rebuild_model
from ctcovid.cli import main
from ctcovid.errors import ConfigError
from ctcovid.train.config import load_run_config
from ctcovid.train.run import fit


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_a_self_describing_run(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg_path, _ = tiny_run
    result = fit(load_run_config(cfg_path), tmp_path / "run")
    hist = _history(tmp_path / "run")
    assert [h["epoch"] for h in hist] == [0, 1, 2] == [h["epoch"] for h in result.history]
    # Learning shows on the held-out patients: the train loss of 3 augmented batches an epoch is
    # noise-dominated (seeds 0-3 gave 0.84->0.64, 0.93->0.51, 0.58->0.72, 1.05->0.23).
    assert hist[-1]["val_loss"] < 0.5 * hist[0]["val_loss"]
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_auroc",
        "lr",
        "samples_per_s",
    ):
        assert key in hist[0]
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "config.json", "split.csv", "train.log"):
        assert (tmp_path / "run" / name).is_file(), name
    # Called from Python with logging unconfigured, train.log still gets the run's INFO records.
    log = (tmp_path / "run" / "train.log").read_text()
    assert "execution on cpu" in log and "epoch 3/3" in log, log
    ck = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ck["labels"] == ["NCP", "CP", "Normal"] and ck["epoch"] == 2
    assert ck["preprocess"]["depth"] == 8 and ck["model"]["name"] == "r3d_10"
    model = rebuild_model(tmp_path / "run" / "checkpoint_last.pt")  # needs nothing but the file
    x = torch.zeros(2, 1, 8, 24, 24)
    assert model(x).shape == (2, 3)


def test_resume_after_sigkill_ends_with_the_same_weights(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    cfg_path, _ = tiny_run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ctcovid", "train", str(cfg_path), "--set", "train.epochs=4"]
    ref = tmp_path / "uninterrupted"
    subprocess.run([*cmd, "--out", str(ref)], check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (run / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_history(run))
    assert done_before < 4, "the run finished before it could be killed; make the fixture slower"
    subprocess.run([*cmd, "--out", str(run), "--resume"], check=True, env=env, capture_output=True)
    a = load_checkpoint(ref / "checkpoint_last.pt")["model"]["state_dict"]
    b = load_checkpoint(run / "checkpoint_last.pt")["model"]["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [h["epoch"] for h in _history(run)] == [0, 1, 2, 3]


def test_ddp_with_two_gloo_ranks_trains(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    cfg_path, _ = tiny_run
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "ctcovid",
            "train",
            str(cfg_path),
            "--set",
            "train.epochs=1",
            "--set",
            "train.deterministic=false",
            "--out",
            str(out),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_history(out)) == 1
    assert load_checkpoint(out / "checkpoint_last.pt")["epoch"] == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=r3d_19", "model.name: unknown model 'r3d_19'; available: "),
        ("train.epoch=3", "unknown key 'train.epoch' (did you mean 'epochs'?)"),
        ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
        ("train.sampler=balanced", "train.sampler: 'balanced' is not one of 'shuffle', 'class_uniform'"),
        ("data.manifest=/nope/manifest.csv", "manifest '/nope/manifest.csv' does not exist"),
        ("preprocess.depth_mode=cube", "depth_mode='cube' is invalid"),
        ("model.kwargs.head=coral", "model.kwargs.head: 'coral' is not one of linear, corn"),
        ("model.kwargs.head=corn", "needs ordered classes, but data.task = 'diagnosis'"),
        ("model.kwargs.shortcutt=B", "model.kwargs: 'shortcutt' is not an argument of r3d_10; valid: "),
    ],
)
def test_bad_config_fails_before_training_naming_the_key(
    tiny_run: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: str,
    message: str,
) -> None:
    cfg_path, _ = tiny_run
    assert main(["train", str(cfg_path), "--set", override, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()


def test_custom_task_needs_labels(tmp_path: Path) -> None:
    from ctcovid.train.config import run_config_from_dict

    cfg = run_config_from_dict({"data": {"task": "custom"}})
    with pytest.raises(ConfigError, match="data.labels must list the class names"):
        cfg.data.label_names()


def test_nan_losses_stop_the_run_before_any_checkpoint(
    tiny_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from ctcovid.data.dataset import CachedDataset
    from ctcovid.train.run import TrainingDiverged

    cfg_path, _ = tiny_run
    real = CachedDataset.__getitem__

    def poisoned(self, key):  # a sample that poisons the loss (the pipeline turns NaN voxels to air)
        x, y, meta = real(self, key)
        return x * np.nan, y, meta

    monkeypatch.setattr(CachedDataset, "__getitem__", poisoned)
    cfg = load_run_config(cfg_path, ["train.max_bad_steps=1", "train.epochs=1"])
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        fit(cfg, tmp_path / "nan")
    assert not (tmp_path / "nan" / "checkpoint_last.pt").exists()


def test_ctrl_c_saves_and_exits_cleanly(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    cfg_path, _ = tiny_run
    out = tmp_path / "int"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctcovid",
            "train",
            str(cfg_path),
            "--set",
            "train.epochs=50",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    ck = load_checkpoint(out / "checkpoint_interrupted.pt")
    assert ck["metrics"] == {"interrupted": True}


def test_bf16_autocast_trains_on_cpu_and_saves_finite_weights(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg_path, _ = tiny_run
    cfg = load_run_config(cfg_path, ["train.precision=bf16", "train.epochs=1", "train.deterministic=false"])
    fit(cfg, tmp_path / "bf16")
    state = load_checkpoint(tmp_path / "bf16" / "checkpoint_last.pt")["model"]["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_channels_last_is_refused_for_the_known_bf16_crash_case(tiny_run: tuple[Path, Path]) -> None:
    from ctcovid.train.run import _channels_last

    cfg_path, _ = tiny_run
    crash = load_run_config(
        cfg_path,
        [
            "train.channels_last=true",
            "preprocess.in_channels=3",
            "preprocess.depth_mode=stack",
            "preprocess.chunk_depth=4",
        ],
    )
    cpu = torch.device("cpu")
    assert _channels_last(crash, cpu, torch.bfloat16) is False
    assert _channels_last(crash, cpu, None) is True  # fp32 is fine
    safe = load_run_config(cfg_path, ["train.channels_last=true"])
    assert _channels_last(safe, cpu, torch.bfloat16) is True


def test_cosine_schedule_falls_from_lr_to_zero_along_a_half_cosine(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    import math

    cfg_path, _ = tiny_run
    cfg = load_run_config(
        cfg_path, ["train.scheduler=cosine", "train.epochs=4", "train.lr=0.002", "train.precise_bn_batches=0"]
    )
    fit(cfg, tmp_path / "cos")
    lrs = [h["lr"] for h in _history(tmp_path / "cos")]
    want = [0.001 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # lr/2 * (1 + cos(pi e / T))
    assert lrs == pytest.approx(want, rel=1e-6)
    assert load_checkpoint(tmp_path / "cos" / "checkpoint_last.pt")["scheduler"]["T_max"] == 4  # resumable


# The tiny cohort's classes read as an ordered scale, from healthy to bilateral ground glass.
ORDINAL = ["data.task=custom", 'data.labels=["Normal", "CP", "NCP"]', "model.kwargs.head=corn"]


def test_corn_head_trains_and_its_checkpoint_rebuilds_with_it(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg_path, _ = tiny_run
    fit(load_run_config(cfg_path, [*ORDINAL, "train.epochs=1"]), tmp_path / "corn")
    ck = load_checkpoint(tmp_path / "corn" / "checkpoint_last.pt")
    assert ck["model"]["kwargs"]["head"] == "corn" and ck["labels"] == ["Normal", "CP", "NCP"]
    model = rebuild_model(ck)
    assert model.head == "corn" and model.fc.out_features == 2
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 8, 24, 24))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))  # log-probabilities, one per class


def test_corn_head_with_one_label_fails_naming_the_labels(tiny_run: tuple[Path, Path]) -> None:
    cfg_path, _ = tiny_run
    with pytest.raises(ConfigError, match=r"needs at least 2, data.labels has \['NCP'\]"):
        load_run_config(cfg_path, ["data.task=custom", 'data.labels=["NCP"]', "model.kwargs.head=corn"])
