"""The training loop, in plain PyTorch: one function per pass over the data.

``train_one_epoch`` does forward, loss, backward and an optimizer step every ``grad_accum``
batches, under autocast when a low-precision dtype is given. A batch whose loss is not finite is
skipped (no step, gradients dropped) and counted; the caller stops the run when too many are, so
a NaN never reaches the weights or a checkpoint. ``evaluate`` returns per-sample probabilities with
their metadata, for aggregation per scan and per patient.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class StepOptions:
    device: torch.device
    autocast_dtype: torch.dtype | None = None  # None: fp32
    channels_last: bool = False
    grad_accum: int = 1
    clip_grad_norm: float = 0.0
    scaler: torch.amp.GradScaler | None = None  # fp16 only


@dataclass
class EpochStats:
    loss: float = 0.0
    accuracy: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    bad_steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def _autocast(opts: StepOptions) -> contextlib.AbstractContextManager[Any]:
    if opts.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=opts.device.type, dtype=opts.autocast_dtype)


def _to_device(x: torch.Tensor, opts: StepOptions) -> torch.Tensor:
    x = x.to(opts.device, non_blocking=True)
    if opts.channels_last and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, Any]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    opts: StepOptions,
    *,
    progress: Progress | None = None,
    total: int = 0,
    on_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One pass over ``loader``; ``on_step`` runs after every optimizer step (weight averaging)."""
    model.train()
    stats, t0 = EpochStats(), time.perf_counter()
    loss_sum, correct, pending = 0.0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y, _meta) in enumerate(loader):
        x, y = _to_device(x, opts), y.to(opts.device)
        with _autocast(opts):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            # Skip the batch entirely: no backward, and drop what earlier micro-batches accumulated.
            stats.bad_steps += 1
            log.warning("non-finite loss at batch %d (%s); batch skipped", i, loss.item())
            optimizer.zero_grad(set_to_none=True)
            pending = 0
            continue
        scaled = loss / opts.grad_accum
        (opts.scaler.scale(scaled) if opts.scaler else scaled).backward()
        pending += 1
        if pending == opts.grad_accum:
            _step(model, optimizer, opts)
            pending = 0
            if on_step is not None:
                on_step()
        n = y.shape[0]
        stats.samples += n
        loss_sum += loss.item() * n
        correct += int((logits.argmax(1) == y).sum().item())
        if progress:
            progress(
                i + 1,
                total,
                {"loss": loss_sum / stats.samples, "samples/s": stats.samples / (time.perf_counter() - t0)},
            )
    if pending:
        _step(model, optimizer, opts)  # the epoch's last, partial accumulation
        if on_step is not None:
            on_step()
    stats.seconds = time.perf_counter() - t0
    stats.loss = loss_sum / stats.samples if stats.samples else math.nan
    stats.accuracy = correct / stats.samples if stats.samples else math.nan
    return stats


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions) -> None:
    if opts.scaler:
        opts.scaler.unscale_(optimizer)
    if opts.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
    if opts.scaler:
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
    loss_fn: nn.Module,
    opts: StepOptions,
) -> tuple[float, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Mean loss, probabilities ``(N, K)``, targets ``(N,)`` and one meta dict per sample."""
    model.eval()
    probs, targets, metas, loss_sum = [], [], [], 0.0
    for x, y, meta in loader:
        x, y = _to_device(x, opts), y.to(opts.device)
        with _autocast(opts):
            logits = model(x).float()
        loss_sum += loss_fn(logits, y).item() * y.shape[0]
        probs.append(torch.softmax(logits, 1).cpu())
        targets.append(y.cpu())
        metas += [
            {k: (v[j].item() if torch.is_tensor(v) else v[j]) for k, v in meta.items()}
            for j in range(y.shape[0])
        ]
    n = sum(t.shape[0] for t in targets)
    if n == 0:
        return math.nan, torch.empty(0, 0), torch.empty(0, dtype=torch.long), []
    return loss_sum / n, torch.cat(probs), torch.cat(targets), metas


@dataclass
class Inference:
    """What :func:`infer` returns: one row per sample."""

    logits: torch.Tensor  # (N, K), float32 on CPU
    features: torch.Tensor  # (N, F): pooled features before the head (for out-of-distribution scores)
    targets: torch.Tensor  # (N,)
    metas: list[dict[str, Any]]


@torch.inference_mode()
def infer(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
    opts: StepOptions,
    max_samples: int | None = None,
) -> Inference:
    """Logits and pooled features of every sample (at most ``max_samples``), in eval mode."""
    from ctcovid.models.features import forward_with_features

    model.eval()
    logits, feats, targets, metas = [], [], [], []
    n = 0
    for x, y, meta in loader:
        with _autocast(opts):
            z, f = forward_with_features(model, _to_device(x, opts))
        if f is None:
            raise TypeError(f"{type(model).__name__} has no 'pool' module: no features to take")
        logits.append(z.float().cpu())
        feats.append(f.float().cpu())
        targets.append(y.cpu())
        metas += [
            {k: (v[j].item() if torch.is_tensor(v) else v[j]) for k, v in meta.items()}
            for j in range(y.shape[0])
        ]
        n += y.shape[0]
        if max_samples is not None and n >= max_samples:
            break
    if not targets:
        return Inference(torch.empty(0, 0), torch.empty(0, 0), torch.empty(0, dtype=torch.long), [])
    return Inference(torch.cat(logits), torch.cat(feats), torch.cat(targets), metas)


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor, Any]],
    opts: StepOptions,
    max_batches: int,
) -> int:
    """Re-estimate BatchNorm running statistics with the current weights ("precise BN").

    With small cohorts an epoch has few steps, and the exponential running averages lag behind
    weights that Adam at 1e-3 moves quickly: evaluation then sees stale statistics and predicts one
    class (measured on the synthetic cohort: 0.33 -> 0.87 validation accuracy with the same weights).
    Averaging the batch statistics of ``max_batches`` un-augmented training batches, in train
    mode with a cumulative average, fixes that (Wu & Johnson, "Rethinking Batch in BatchNorm", 2021).
    Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or max_batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    was_training = model.training
    model.train()
    n = 0
    for x, _y, _meta in loader:
        with _autocast(opts):
            model(_to_device(x, opts))
        n += 1
        if n >= max_batches:
            break
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.train(was_training)
    return n
