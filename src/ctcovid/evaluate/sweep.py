"""Sweeps: a grid of training runs, each evaluated on the test split, tabulated like the papers.

A sweep TOML::

    base = "../diagnosis_cc-ccii.toml"      # run config, relative to this file
    table = "depth_batch"                   # depth_batch | models | severity (output layout)

    [grid]                                  # the cartesian product of these lists
    "preprocess.chunk_depth" = [2, 4, 8, 16, 32, 64]
    "train.batch_size" = [8, 32, 64]

    [set]                                   # fixed overrides of the base config
    "train.epochs" = 20

    [runs.resnet50_2d_vote]                 # explicit runs (times the grid, if both are given)
    "model.name" = "resnet50_2d_slices"
    "evaluate.aggregate" = "majority"       # evaluation options may differ per run

    [evaluate]                              # defaults of the evaluation of every run
    split = "test"
    level = "scan"                          # the level the table reports: chunk | scan | patient
    aggregate = "mean"                      # chunks -> scan: mean | majority
    positive = "auto"                       # class of the binary recall/precision/F1 ("auto": NCP)
    checkpoint = "best"                     # best | last
    n_resamples = 1000
    report = true                           # per-run report.md/.html + plots (false: metrics.json)

Overrides apply in the order base, ``[set]``, command-line ``--set``, then the run's own values.
Every run config is validated before the first run starts. Each run trains into
``<out>/<run name>/`` (the name is made from its grid values) and is evaluated into
``<out>/<run name>/eval_<split>/``. Re-running a sweep skips finished runs (final-epoch
``checkpoint_last.pt`` and evaluation present), resumes interrupted ones and refuses a run folder
trained with a different config. Tables are written by :mod:`ctcovid.evaluate.tables`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctcovid.config import apply_overrides, from_dict, load_toml
from ctcovid.errors import ConfigError, CtcovidError
from ctcovid.train.config import RunConfig, run_config_from_dict

log = logging.getLogger(__name__)
TABLES = ("depth_batch", "models", "severity")
SECTIONS = ("data", "preprocess", "model", "train", "reliability")
Event = Callable[[str, int, int, str], None]  # (what, index, total, run name)


@dataclass(frozen=True)
class EvaluateOptions:
    """How every run of a sweep is evaluated (``[evaluate]``; ``evaluate.<key>`` per run)."""

    split: Literal["train", "val", "test", "all"] = "test"
    level: Literal["chunk", "scan", "patient"] = "scan"
    aggregate: Literal["mean", "majority"] = "mean"
    positive: str = "auto"  # a label, "auto" (NCP when it is a label) or "none"
    checkpoint: Literal["best", "last"] = "best"
    n_resamples: int = 1000
    seed: int = 0
    batch_size: int = 8
    report: bool = True  # per-run report.md/.html and plots (false: metrics.json only, faster)


@dataclass(frozen=True)
class SweepRun:
    name: str
    values: dict[str, Any]  # its own "section.key" values (grid point and/or [runs.<name>] table)
    config: RunConfig
    config_dict: dict[str, Any]
    evaluate: EvaluateOptions


@dataclass(frozen=True)
class Sweep:
    path: Path
    base: Path
    table: str
    grid: dict[str, list[Any]]
    runs: list[SweepRun] = field(default_factory=list)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (``section.key=value``) apply to every run."""
    p = Path(path)
    raw = load_toml(p)
    known = {"base", "table", "grid", "set", "runs", "evaluate"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {unknown}; valid: {', '.join(sorted(known))}")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"{p}: 'base' must name the run config TOML, relative to the sweep file")
    base = (p.parent / raw["base"]).resolve()
    table = raw.get("table", "models")
    if table not in TABLES:
        raise ConfigError(f"{p}: table {table!r} is not one of {', '.join(TABLES)}")
    grid = _table(raw, "grid", p)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{p}: grid[{key!r}] must be a non-empty list, got {values!r}")
    runs_raw = _table(raw, "runs", p)
    for name, values in runs_raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f'{p}: [runs.{name}] must be a table of "section.key" = value')
    base_raw = load_toml(base)
    eval_defaults = dict(_table(raw, "evaluate", p))
    cli_train: list[str] = []
    for text in overrides or []:
        key, _, value = text.partition("=")
        if key.strip().startswith("evaluate."):
            eval_defaults[key.strip()[9:]] = apply_overrides({}, [f"v={value}"])["v"]
        else:
            cli_train.append(text)
    fixed = {k: v for k, v in _table(raw, "set", p).items() if not k.startswith("evaluate.")}
    eval_defaults.update({k[9:]: v for k, v in _table(raw, "set", p).items() if k.startswith("evaluate.")})
    base_raw = apply_overrides(_with_values(base_raw, fixed, p), cli_train)

    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [{}]
    named = list(runs_raw.items()) or [("", {})]
    runs = []
    for (run_name, run_values), point in itertools.product(named, points):
        values = {**run_values, **point}
        name = "_".join(x for x in (run_name, _point_name(point, keys)) if x) or base.stem
        train_values = {k: v for k, v in values.items() if not k.startswith("evaluate.")}
        eval_values = {k[9:]: v for k, v in values.items() if k.startswith("evaluate.")}
        cfg_raw = _with_values(base_raw, train_values, p)
        try:
            cfg = run_config_from_dict(cfg_raw, base.parent)
            ev = from_dict(EvaluateOptions, {**eval_defaults, **eval_values}, "evaluate")
            labels = cfg.data.label_names()
            if ev.positive not in ("auto", "none", *labels):
                raise ConfigError(
                    f"evaluate.positive {ev.positive!r} is not a label; use one of {', '.join(labels)}, auto, none"
                )
        except ConfigError as e:
            raise ConfigError(f"{p}: run {name!r}: {e}") from e
        runs.append(SweepRun(name, values, cfg, cfg.to_dict(), ev))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{p}: runs share the names {dupes}; give [runs.<name>] tables distinct names")
    return Sweep(p, base, table, grid, runs)


def _table(raw: dict[str, Any], key: str, p: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{p}: [{key}] must be a table, got {value!r}")
    return value


def _with_values(cfg: dict[str, Any], values: dict[str, Any], p: Path) -> dict[str, Any]:
    """``cfg`` with ``{"section.key": value}`` set (nested keys allowed, e.g. ``model.kwargs.x``)."""
    out = json.loads(json.dumps(cfg))  # a deep copy of plain TOML data
    for dotted, value in values.items():
        parts = dotted.split(".")
        if len(parts) < 2 or parts[0] not in SECTIONS:
            raise ConfigError(
                f"{p}: key {dotted!r} must be 'section.key' with section one of "
                f"{', '.join((*SECTIONS, 'evaluate'))}"
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _point_name(point: dict[str, Any], keys: list[str]) -> str:
    def clean(v: Any) -> str:
        return re.sub(r"[^A-Za-z0-9._]+", "-", str(v)).strip("-")

    if len(point) == 1:
        return clean(next(iter(point.values())))
    short = [k.split(".")[-1] for k in keys]
    label = short if len(set(short)) == len(short) else [k.replace(".", "-") for k in keys]
    return "_".join(f"{lab}-{clean(point[k])}" for lab, k in zip(label, keys))


# ----------------------------------------------------------------------------------------- runs
def run_state(run: SweepRun, run_dir: Path) -> Literal["new", "partial", "trained", "done"]:
    """Where a run folder stands; raises ConfigError when it was trained with another config."""
    cfg_file = run_dir / "config.json"
    if cfg_file.is_file():
        old = _flat(json.loads(cfg_file.read_text()))
        new = _flat(json.loads(json.dumps(run.config_dict, default=str)))
        # Keys on one side only come from a ctcovid upgrade that added or removed a setting; the
        # run is kept (its value was the default of its time) rather than retrained.
        diff = sorted(k for k in set(old) & set(new) if old[k] != new[k])
        added = sorted(set(old) ^ set(new))
        if added and not diff:
            log.warning("run folder %s: config keys %s are new or gone since it was trained", run_dir, added)
        if diff:
            raise ConfigError(
                f"run folder '{run_dir}' was trained with another config (differs in {', '.join(diff[:6])}); "
                "delete the folder or sweep into another --out"
            )
    last = run_dir / "checkpoint_last.pt"
    if not last.is_file():
        return "new"
    if _checkpoint_epoch(last) < run.config.train.epochs - 1:
        return "partial"
    return "done" if (eval_dir(run, run_dir) / "metrics.json").is_file() else "trained"


def run_settings(run: SweepRun) -> dict[str, Any]:
    """What a table shows of a run besides its metrics: name, model, depth, batch size, aggregation
    and the swept values (plain data for :func:`ctcovid.evaluate.tables.run_row`)."""
    cfg, pre = run.config, run.config.preprocess
    return {
        "run": run.name,
        "model": cfg.model.name,
        "depth": pre.chunk_depth if pre.depth_mode == "stack" else pre.depth,
        "batch_size": cfg.train.batch_size,
        "aggregate": run.evaluate.aggregate,
        **run.values,
    }


def eval_dir(run: SweepRun, run_dir: Path) -> Path:
    return run_dir / f"eval_{run.evaluate.split}"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _checkpoint_epoch(path: Path) -> int:
    import torch

    # mmap: reads the header, not the (possibly GB-sized) tensors.
    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ck.get("epoch", -1))


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    on_event: Event | None = None,
    batch_progress: Callable[[int], Any] | None = None,
    cache_progress: Callable[[int, int], None] | None = None,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Train and evaluate every run not yet done, then write the tables; returns the table rows.

    A run failing with a user-facing error (e.g. training diverged) is logged, reported through
    ``on_event("failed", ...)`` and left out of the tables; the others go on.
    """
    from ctcovid.evaluate.report import evaluate_checkpoint, write_report
    from ctcovid.evaluate.tables import run_row, write_tables
    from ctcovid.train.run import fit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(sweep.runs)
    rows = []

    def event(what: str, i: int, name: str) -> None:
        log.info("sweep run %d/%d %s: %s", i + 1, total, name, what)
        if on_event:
            on_event(what, i, total, name)

    for i, run in enumerate(sweep.runs):
        run_dir = out / run.name
        state = run_state(run, run_dir)
        try:
            if state in ("new", "partial"):
                event("resuming" if state == "partial" else "training", i, run.name)
                fit(
                    run.config,
                    run_dir,
                    resume=state == "partial",
                    config_dict=run.config_dict,
                    batch_progress=batch_progress,
                    cache_progress=cache_progress,
                )
            if state != "done":
                event("evaluating", i, run.name)
                ev = run.evaluate
                ckpt = run_dir / f"checkpoint_{ev.checkpoint}.pt"
                result = evaluate_checkpoint(
                    ckpt if ckpt.is_file() else run_dir / "checkpoint_last.pt",
                    run.config.data.manifest,
                    split=ev.split,
                    split_file=run_dir / "split.csv",
                    aggregate=ev.aggregate,
                    positive=None if ev.positive == "none" else ev.positive,
                    n_resamples=ev.n_resamples,
                    seed=ev.seed,
                    batch_size=ev.batch_size,
                    device=device,
                    cache_dir=run.config.data.cache_dir or None,
                )
                if ev.report:
                    write_report(result, eval_dir(run, run_dir), run_dir=run_dir)
                else:
                    eval_dir(run, run_dir).mkdir(parents=True, exist_ok=True)
                    (eval_dir(run, run_dir) / "metrics.json").write_text(json.dumps(result, indent=2))
            else:
                event("done already", i, run.name)
        except CtcovidError as e:
            log.error("sweep run %s failed: %s", run.name, e)
            event(f"failed: {e}", i, run.name)
            continue
        metrics = json.loads((eval_dir(run, run_dir) / "metrics.json").read_text())
        rows.append(run_row(run_settings(run), metrics, run.evaluate.level))
    write_tables(
        rows, out, table=sweep.table, name=sweep.path.stem, base=str(sweep.base), grid=list(sweep.grid)
    )
    (out / "sweep.json").write_text(
        json.dumps(
            {"sweep": str(sweep.path), "base": str(sweep.base), "table": sweep.table, "rows": rows},
            indent=2,
            default=str,
        )
    )
    return rows
