"""``fit``: seed -> data -> model -> optimizer -> loop -> save, top to bottom.

The run folder holds ``config.toml``-equivalent ``config.json`` (resolved), ``split.csv``,
``metrics.jsonl`` (one line per epoch), ``checkpoint_last.pt`` (every epoch, atomic),
``checkpoint_best.pt`` (by ``train.best_metric`` on validation, aggregated per scan) and
``train.log``. ``resume=True`` continues from ``checkpoint_last.pt`` exactly: every random choice of
epoch ``e`` (sampler order, augmentation, dropout) is seeded from ``(seed, e)``, so replaying from an
epoch boundary reproduces an uninterrupted run (CPU, ``train.deterministic``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ctcovid.checkpoint import link_checkpoint, load_checkpoint, make_checkpoint, save_checkpoint, unwrap
from ctcovid.data.cache import PreprocessCache
from ctcovid.data.dataset import CachedDataset
from ctcovid.data.manifest import read_manifest
from ctcovid.data.samplers import ClassUniformBatchSampler, ShuffleBatchSampler, class_weights
from ctcovid.data.splits import read_split, split_path, split_patients, write_split
from ctcovid.errors import ConfigError, CtcovidError
from ctcovid.metrics.metrics import aggregate_by, classification_metrics, decision_for_head
from ctcovid.models import create_model
from ctcovid.preprocess.augment import build_augment
from ctcovid.train import distributed as D
from ctcovid.train import runlog, speed
from ctcovid.train.config import RunConfig
from ctcovid.train.interrupt import interrupt_flag, raise_if
from ctcovid.train.loop import EpochStats, StepOptions, evaluate, recompute_bn_stats, train_one_epoch
from ctcovid.train.reliability import add_reliability

log = logging.getLogger(__name__)
BatchProgress = Callable[[int, int, dict[str, float]], None]


class TrainingDiverged(CtcovidError, RuntimeError):
    """Too many non-finite losses: the run stops before a NaN reaches a checkpoint."""


@dataclass
class FitResult:
    out_dir: Path
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


def model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "in_channels": cfg.preprocess.in_channels,
        "num_classes": len(cfg.data.label_names()),
    }
    if cfg.model.dropout is not None:
        kw["dropout"] = cfg.model.dropout
    return {**kw, **cfg.model.kwargs}


def _channels_last(cfg: RunConfig, device: torch.device, dtype: torch.dtype | None) -> bool:
    """``train.channels_last`` resolved for this input (see :func:`.speed.resolve_channels_last`)."""
    shape = speed.input_shape(cfg.preprocess, 1)
    depth = shape[2] if shape else None
    return speed.resolve_channels_last(
        cfg.train.channels_last, device, dtype, cfg.preprocess.in_channels, depth
    )


def prepare_split(cfg: RunConfig, rows: list[Any], info: D.DistInfo) -> dict[str, str]:
    path = Path(cfg.data.split) if cfg.data.split else split_path(cfg.data.manifest)
    if cfg.data.split and not path.is_file():
        raise ConfigError(f"data.split: split file '{path}' does not exist")
    if info.is_main and not path.is_file():
        split = split_patients(rows, val=cfg.data.val, test=cfg.data.test, seed=cfg.data.split_seed)
        write_split(rows, split, None, path)
    # Every rank passes this barrier exactly once: a rank that checked for the file only after
    # rank 0 wrote it would otherwise skip it and pair with a later barrier.
    D.barrier(info)
    return read_split(path)


def fit(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    config_dict: dict[str, Any] | None = None,
    batch_progress: Callable[[int], BatchProgress | None] | None = None,
    cache_progress: Callable[[int, int], None] | None = None,
    check_space: bool = True,
) -> FitResult:
    """Train ``cfg`` into ``out_dir``; see the module docstring for what is written.

    ``check_space``: estimate the preprocessing cache from the manifest's ``n_slices`` and stop
    with :class:`~ctcovid.data.cache.CacheFullError` before writing anything when it will not fit.
    """
    t = cfg.train
    device = D.pick_device(t.device, D.DistInfo())
    info = D.init_distributed(device)
    device = D.pick_device(t.device, info)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_log = runlog.RunLog(out / "train.log") if info.is_main else None
    if t.threads:
        torch.set_num_threads(t.threads)
    speed.configure_determinism(t.deterministic, device)
    torch.manual_seed(t.seed)

    # ---- data
    labels = list(cfg.data.label_names())
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is empty: set it to a manifest CSV made by 'ctcovid import'")
    rows = read_manifest(cfg.data.manifest, labels=labels)
    split = prepare_split(cfg, rows, info)
    train_rows = [r for r in rows if split.get(r.scan_id) == "train"]
    val_rows = [r for r in rows if split.get(r.scan_id) == "val"]
    if not train_rows:
        raise ConfigError(f"no training scans: the split of {cfg.data.manifest} has no 'train' rows")
    manifest_dir = Path(cfg.data.manifest).parent
    cache = PreprocessCache(
        cfg.data.cache_dir or manifest_dir / ".ctcovid_cache", cfg.preprocess, manifest_dir
    )
    if info.is_main:
        if check_space:
            cache.check_space(train_rows + val_rows)  # before anything is written
        cache.build(
            train_rows + val_rows, workers=cfg.data.workers or (os.cpu_count() or 1), progress=cache_progress
        )
    D.barrier(info)
    augment = build_augment(cfg.preprocess.augment) if t.augment else None
    train_ds = CachedDataset(train_rows, cache, labels, augment=augment, seed=t.seed)
    val_ds = CachedDataset(val_rows, cache, labels)
    bn_ds = CachedDataset(train_rows, cache, labels)  # un-augmented: statistics as evaluation will see them
    for name, ds in (("training", train_ds), ("validation", val_ds)):
        if ds.excluded:
            scan_id, _, _, reason = ds.excluded[0]
            log.warning(
                "%d %s scan(s) give no sample and are left out, e.g. %s: %s",
                len(ds.excluded), name, scan_id, reason,
            )  # fmt: skip
    if len(train_ds) == 0:
        raise ConfigError(
            f"no training samples: all {len(train_rows)} training scans are shorter than "
            f"preprocess.chunk_depth={cfg.preprocess.chunk_depth} and preprocess.chunk_short='drop'"
        )
    bn_sampler = ShuffleBatchSampler(len(bn_ds), t.batch_size, seed=t.seed + 1)
    if t.sampler == "class_uniform":
        sampler: Any = ClassUniformBatchSampler(
            train_ds.targets,
            t.batch_size,
            num_classes=len(labels),
            seed=t.seed,
            rank=info.rank,
            world_size=info.world_size,
            positions=True,  # each draw of an oversampled scan gets its own augmentation
        )
    else:
        sampler = ShuffleBatchSampler(
            len(train_ds),
            t.batch_size,
            seed=t.seed,
            rank=info.rank,
            world_size=info.world_size,
            positions=True,
        )
    workers = cfg.data.loader_workers
    train_loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, persistent_workers=False)
    val_loader = DataLoader(val_ds, batch_size=t.batch_size, shuffle=False, num_workers=workers)

    # ---- model, loss, optimizer
    kwargs = model_kwargs(cfg)
    model = create_model(cfg.model.name, **kwargs)
    if cfg.model.pretrained:
        from ctcovid.models.weights import load_pretrained

        load_pretrained(model, cfg.model.pretrained)
    model = model.to(device)
    # Precision, layout and kernels chosen by measured rules; bf16 is checked against fp32 (speed.py).
    plan = speed.plan_execution(
        model,
        device,
        precision=t.precision,
        channels_last=t.channels_last,
        compile=t.compile,
        shape=speed.input_shape(cfg.preprocess, t.batch_size),
    )
    dtype, channels_last = plan.autocast_dtype, plan.channels_last
    log.info("execution on %s: %s", device, "; ".join(plan.notes) or "fp32")
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    if plan.compile:
        model.compile()  # in place: parameter names and checkpoints stay those of the eager model
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    weight = (
        torch.from_numpy(class_weights(train_ds.targets, len(labels))).to(device)
        if t.loss == "weighted_ce"
        else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimizer = _optimizer(cfg, model, fused=plan.fused_optimizer)
    scheduler: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
        if t.scheduler == "cosine"
        else torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
    )
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    opts = StepOptions(device, dtype, channels_last, t.grad_accum, t.clip_grad_norm, scaler)
    # Weight averaging: validated, selected and saved in place of the raw weights (train.ema_decay).
    ema = (
        torch.optim.swa_utils.AveragedModel(
            unwrap(model), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema_decay)
        )
        if t.ema_decay > 0
        else None
    )

    # ---- resume
    start, best, history = 0, {}, []
    last_path, best_path, metrics_path = (
        out / "checkpoint_last.pt",
        out / "checkpoint_best.pt",
        out / "metrics.jsonl",
    )
    if resume and last_path.is_file():
        ck = load_checkpoint(last_path)
        unwrap(model).load_state_dict(ck.get("train_weights") or ck["model"]["state_dict"])
        if ema is not None and "ema_n_averaged" in ck:
            ema.module.load_state_dict(ck["model"]["state_dict"])
            ema.n_averaged.copy_(ck["ema_n_averaged"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start, best = ck["epoch"] + 1, ck.get("best", {})
        history = [h for h in runlog.read_jsonl(metrics_path) if h["epoch"] <= ck["epoch"]]
        if not history or history[-1]["epoch"] < ck["epoch"]:
            history.append(ck["metrics"])
        log.info("resuming from %s at epoch %d", last_path, start)
    elif resume:
        log.warning("--resume: no %s yet, starting from scratch", last_path)
    if info.is_main:
        runlog.write_jsonl(metrics_path, history)
        (out / "config.json").write_text(json.dumps(config_dict or cfg.to_dict(), indent=2, default=str))
        write_split(rows, split, None, out / "split.csv")  # the split used, next to the run

    # ---- loop
    tb = runlog.tensorboard(out) if info.is_main else None
    ckpt_common: dict[str, Any] = {
        "name": cfg.model.name,
        "kwargs": kwargs,
        "labels": labels,
        "task": cfg.data.task,
        "preprocess": cfg.preprocess.to_dict(),
        "config": config_dict or cfg.to_dict(),
    }
    epoch = start - 1
    try:
        with interrupt_flag() as interrupted:
            for epoch in range(start, t.epochs):
                raise_if(interrupted)
                sampler.set_epoch(epoch)
                train_ds.set_epoch(epoch)
                torch.manual_seed(t.seed * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch) only
                lr = optimizer.param_groups[0]["lr"]
                stats = train_one_epoch(
                    model,
                    train_loader,
                    optimizer,
                    loss_fn,
                    opts,
                    progress=batch_progress(epoch) if batch_progress else None,
                    total=len(sampler),
                    on_step=(lambda: ema.update_parameters(unwrap(model))) if ema is not None else None,
                )
                final = ema.module if ema is not None else unwrap(model)  # what is validated and saved
                if stats.bad_steps > t.max_bad_steps or not math.isfinite(stats.loss):
                    raise TrainingDiverged(
                        f"epoch {epoch + 1}: {stats.bad_steps} batches had a non-finite loss (limit "
                        f"train.max_bad_steps={t.max_bad_steps}); no checkpoint was written for it. "
                        "Try precision='fp32' or a lower lr."
                    )
                scheduler.step()
                if info.is_main and t.precise_bn_batches:
                    # Rank 0 only: DDP broadcasts rank 0's buffers to the others at the next forward.
                    bn_sampler.set_epoch(epoch)
                    bn_loader = DataLoader(bn_ds, batch_sampler=bn_sampler, num_workers=workers)
                    recompute_bn_stats(final, bn_loader, opts, t.precise_bn_batches)
                elif ema is not None:  # no precise BN: the averaged net uses the raw net's statistics
                    for b_avg, b_raw in zip(ema.module.buffers(), unwrap(model).buffers(), strict=True):
                        b_avg.copy_(b_raw)
                if info.is_main:
                    record = {
                        "epoch": epoch,
                        "lr": lr,
                        **_train_record(stats),
                        **_validate(final, val_loader, loss_fn, opts, len(labels)),
                    }
                    history.append(record)
                    improved = _better(record, best, t.best_metric)
                    if improved:
                        best = {
                            "epoch": epoch,
                            t.best_metric: record.get(t.best_metric),
                            "val_accuracy": record.get("val_accuracy"),
                        }
                    averaged: dict[str, Any] = {}
                    if ema is not None:  # the raw weights and the average's state, for --resume
                        averaged = {
                            "train_weights": {
                                k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()
                            },
                            # the average's weights are the checkpoint's model: only its count here
                            "ema_n_averaged": ema.n_averaged.detach().cpu(),
                        }
                    ck = make_checkpoint(
                        final,
                        **ckpt_common,
                        epoch=epoch,
                        metrics=record,
                        best=best,
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict() if scaler else {},
                        **averaged,
                    )
                    runlog.append_jsonl(
                        metrics_path, record
                    )  # before the checkpoint: a resume drops lines past it
                    if tb is not None:
                        for key, value in record.items():
                            if isinstance(value, int | float) and key != "epoch":
                                tb.add_scalar(key, value, epoch)
                        tb.flush()
                    save_checkpoint(ck, last_path)
                    if improved:
                        link_checkpoint(last_path, best_path)
                    log.info("epoch %d/%d %s", epoch + 1, t.epochs, runlog.fmt(record))
                D.barrier(info)
                raise_if(interrupted)
            if info.is_main and cfg.reliability.enabled and best_path.is_file() and epoch + 1 == t.epochs:
                add_reliability(cfg, best_path, last_path, bn_ds, val_ds, opts)
    except KeyboardInterrupt:
        if info.is_main:
            # Mid-epoch weights are kept for inspection; --resume restarts from the last epoch boundary.
            save_checkpoint(
                make_checkpoint(model, **ckpt_common, epoch=epoch, metrics={"interrupted": True}),
                out / "checkpoint_interrupted.pt",
            )
            log.warning("interrupted in epoch %d; --resume continues after %s", epoch + 1, last_path.name)
        raise
    finally:
        if tb is not None:
            tb.close()
        D.cleanup(info)
        if run_log is not None:
            run_log.close()
    return FitResult(out, epoch + 1 - start, history, best)


def _optimizer(cfg: RunConfig, model: nn.Module, *, fused: bool = False) -> torch.optim.Optimizer:
    t, params = cfg.train, model.parameters()
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel over all parameters, the same update (7x faster than foreach on CPU).
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


def _train_record(s: EpochStats) -> dict[str, Any]:
    return {
        "train_loss": s.loss,
        "train_accuracy": s.accuracy,
        "samples_per_s": round(s.samples_per_s, 3),
        "epoch_seconds": round(s.seconds, 3),
        "bad_steps": s.bad_steps,
    }


def _validate(
    model: nn.Module, loader: DataLoader[Any], loss_fn: nn.Module, opts: StepOptions, num_classes: int
) -> dict[str, Any]:
    if len(loader.dataset) == 0:  # type: ignore[arg-type]
        return {}
    loss, probs, targets, metas = evaluate(model, loader, loss_fn, opts)
    p, y, _ = aggregate_by(probs.numpy(), targets.numpy(), [m["scan_id"] for m in metas])  # chunks -> scans
    m = classification_metrics(p, y, num_classes, decision=decision_for_head(getattr(model, "head", None)))
    return {
        "val_loss": loss,
        "val_accuracy": m["accuracy"],
        "val_f1_macro": m["f1_macro"],
        "val_auroc": m["auroc"],
        "val_scans": m["n"],
    }


def _better(record: dict[str, Any], best: dict[str, Any], metric: str) -> bool:
    value = record.get(metric)
    if value is None:
        value = record.get("val_accuracy")  # e.g. AUROC undefined on a one-class validation set
        metric_best = best.get("val_accuracy", best.get(metric))
    else:
        metric_best = best.get(metric)
    if value is None:
        return not best  # no validation at all: keep the first, then the last is the model
    if metric_best is None:
        return True
    return value < metric_best if metric == "val_loss" else value > metric_best
