"""Weight averaging (train.ema_decay): what is validated and saved, and an exact resume."""

from __future__ import annotations

from pathlib import Path

import torch

from ctcovid.checkpoint import load_checkpoint
from ctcovid.train.config import load_run_config
from ctcovid.train.run import fit


def _fit(cfg_path: Path, out: Path, epochs: int, resume: bool = False) -> dict:
    cfg = load_run_config(
        cfg_path, [f"train.epochs={epochs}", "train.ema_decay=0.8", "reliability.enabled=false"]
    )
    fit(cfg, out, resume=resume)
    return load_checkpoint(out / "checkpoint_last.pt")


def test_the_saved_model_is_the_average_and_the_raw_weights_are_kept_for_resume(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    ck = _fit(tiny_run[0], tmp_path / "run", 2)
    saved, raw = ck["model"]["state_dict"], ck["train_weights"]
    assert ck["ema_n_averaged"].item() > 1
    name = "fc.weight"
    assert not torch.equal(saved[name], raw[name])  # the average trails the raw weights


def test_resuming_an_averaged_run_ends_where_an_uninterrupted_run_ends(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    straight = _fit(tiny_run[0], tmp_path / "a", 3)
    _fit(tiny_run[0], tmp_path / "b", 2)
    resumed = _fit(tiny_run[0], tmp_path / "b", 3, resume=True)
    for key in ("model", "train_weights"):
        a = straight[key]["state_dict"] if key == "model" else straight[key]
        b = resumed[key]["state_dict"] if key == "model" else resumed[key]
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
