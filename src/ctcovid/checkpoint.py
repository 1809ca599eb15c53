"""Self-describing checkpoints: everything needed to rebuild, resume or serve a model.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True`` (no
pickled code runs on load). Keys:

``format``, ``version``; ``model`` = ``{"name", "kwargs", "state_dict"}``; ``labels`` (class names
in output order); ``task``; ``preprocess`` (the preprocessing config as a plain dict, so predict and
serve rebuild the very pipeline the model was trained with); ``config`` (the resolved run config);
``epoch``; ``metrics``; and for resuming ``optimizer``, ``scheduler``, ``scaler``, ``rng``
(torch CPU / CUDA generator states) and ``extra``.

Writes are atomic (temp file in the same folder, fsync, rename), so a crash mid-write leaves the
previous checkpoint intact, and :func:`save_checkpoint` refuses a model whose weights are not all
finite, so a NaN never reaches disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctcovid.errors import CtcovidError

FORMAT = "ctcovid-checkpoint"
VERSION = 1


class CheckpointError(CtcovidError, ValueError):
    """A checkpoint is missing, unreadable, or not a ctcovid checkpoint."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def model_state_is_finite(model: nn.Module) -> bool:
    return all(
        torch.isfinite(t).all().item() for t in unwrap(model).state_dict().values() if t.is_floating_point()
    )


def make_checkpoint(
    model: nn.Module,
    *,
    name: str,
    kwargs: dict[str, Any],
    labels: list[str],
    task: str,
    preprocess: dict[str, Any],
    config: dict[str, Any] | None = None,
    epoch: int = 0,
    metrics: dict[str, Any] | None = None,
    **resume_state: Any,
) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": name, "kwargs": dict(kwargs), "state_dict": state},
        "labels": list(labels),
        "task": task,
        "preprocess": preprocess,
        "config": config or {},
        "epoch": epoch,
        "metrics": metrics or {},
        **resume_state,
    }


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write atomically; refuse non-finite weights (the previous file stays untouched)."""
    state = ckpt["model"]["state_dict"]
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"refusing to save {path}: non-finite values in {', '.join(bad[:5])}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def link_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` the same checkpoint as ``src`` without writing it again (hard link, atomic).

    ``src`` is later replaced by rename, which gives it a new inode, so ``dst`` keeps this version.
    Falls back to a copy where hard links are not supported.
    """
    import shutil

    out = Path(dst)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, out)
    return out


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (tensors on CPU) and check it is one of ours."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (p / name).is_file():
                p = p / name
                break
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found (pass a .pt file or a run folder)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, runtime) on corrupt files
        raise CheckpointError(f"checkpoint '{p}' is unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not a ctcovid checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(
            f"'{p}' has checkpoint version {ckpt['version']}; this ctcovid reads <= {VERSION}"
        )
    ckpt["path"] = str(p)
    return ckpt


def rebuild_model(ckpt: dict[str, Any] | str | Path) -> nn.Module:
    """The trained model, in eval mode, from a checkpoint dict or path; needs nothing else."""
    from ctcovid.models import create_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    spec = ckpt["model"]
    model = create_model(spec["name"], **spec["kwargs"])
    model.load_state_dict(spec["state_dict"])
    return model.eval()
