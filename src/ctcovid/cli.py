"""Command-line interface: the only module that reads argv and writes to stdout.

Each subcommand is a pair of functions, ``_add_<name>(parser)`` and ``_run_<name>(args)``, and
imports what it needs lazily so ``ctcovid --help`` stays fast. User-facing errors
(:class:`~ctcovid.errors.CtcovidError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ctcovid import __version__
from ctcovid.errors import CtcovidError

log = logging.getLogger("ctcovid")


# --------------------------------------------------------------------------- inspect
def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="DICOM series folder, NIfTI file, slice-image folder, .npy/.npz")
    p.add_argument("--series-uid", help="read this SeriesInstanceUID instead of the largest CT series")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--png", metavar="FILE", help="write an axial/coronal/sagittal montage to FILE")


def _run_inspect(args: argparse.Namespace) -> int:
    from ctcovid.io import load_volume
    from ctcovid.io.preview import describe_volume, save_montage

    vol = load_volume(args.path, series_uid=args.series_uid)
    report = describe_volume(vol)
    if args.png:
        report["png"] = str(save_montage(vol, args.png))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, list):
            print(f"{key:<{width}} : {len(value)}")
            for item in value:
                print(f"{'':<{width}}   - {item}")
        else:
            print(f"{key:<{width}} : {value}")
    return 0


# --------------------------------------------------------------------------- synth
def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--n", type=int, default=60, help="number of scans (default 60)")
    p.add_argument("--task", choices=["diagnosis", "severity"], default="diagnosis")
    p.add_argument("--format", choices=["dicom", "nifti", "png", "npy"], default="png")
    p.add_argument("--seed", type=int, default=0)


def _run_synth(args: argparse.Namespace) -> int:
    from ctcovid.data.synthetic import SynthConfig, generate_cohort

    cfg = SynthConfig(n=args.n, task=args.task, format=args.format, seed=args.seed)
    with _progress(args.n, "synth") as tick:
        summary = generate_cohort(args.out, cfg, progress=tick)
    _print_summary(summary)
    return 0


def _print_summary(summary: Any) -> None:
    import dataclasses

    for key, value in dataclasses.asdict(summary).items():
        print(f"{key}: {value}")


# --------------------------------------------------------------------------- import / split
def _add_import(p: argparse.ArgumentParser) -> None:
    from ctcovid.data.cohorts import list_importers

    p.add_argument("kind", help=f"cohort layout: {', '.join(list_importers())}")
    p.add_argument("root", help="dataset folder as published (the .npz file for medmnist, the CSV for csv)")
    p.add_argument("-o", "--out", required=True, help="manifest CSV to write")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="importer option, e.g. score_column=Severity, score_offset=1, min_slices=16, patient_regex='(P\\d+)'",
    )


def _run_import(args: argparse.Namespace) -> int:
    import inspect

    from ctcovid.config import parse_override
    from ctcovid.data.cohorts import get_importer
    from ctcovid.data.manifest import rebase_rows, summary_table, write_manifest
    from ctcovid.errors import ConfigError

    importer = get_importer(args.kind)
    params = [n for n in inspect.signature(importer).parameters if n not in ("root", "progress")]
    options: dict[str, Any] = {}
    for text in args.option:
        key, value = parse_override(text)
        if len(key) != 1 or key[0] not in params:
            raise ConfigError(f"unknown option {'.'.join(key)!r} for importer {args.kind!r}; valid: {', '.join(params) or 'none'}")
        options[key[0]] = value
    with _progress(1, f"import {args.kind}") as tick:
        result = importer(args.root, progress=tick, **options)
    out = Path(args.out)
    rows = rebase_rows(result.rows, result.root, out.parent)
    write_manifest(rows, out)
    print(summary_table(result.rows))
    print(f"found {result.found} scans: imported {len(result.rows)}, skipped {len(result.skipped)}")
    for path, why in result.skipped:
        print(f"  skipped {path}: {why}")
    flagged = sum(1 for r in result.rows if r.flags)
    if flagged:
        print(f"{flagged} scans carry flags (see the 'flags' column)")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"manifest written to {out}")
    return 0


def _add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="manifest CSV (from ctcovid import)")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction of patients (default 0.2)")
    p.add_argument("--test", type=float, default=0.2, help="test fraction of patients (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=0, help="also assign k folds (k >= 2)")
    p.add_argument("--check", action="store_true", help="only check the existing split file; exit 1 on leakage")


def _run_split(args: argparse.Namespace) -> int:
    from ctcovid.data.manifest import read_manifest, summary_table
    from ctcovid.data.splits import (
        kfold_patients,
        leaking_patients,
        read_split,
        split_path,
        split_patients,
        write_split,
    )

    rows = read_manifest(args.manifest, check_files=False)
    if args.check:
        assignment = read_split(split_path(args.manifest))
        missing = [r.scan_id for r in rows if r.scan_id not in assignment]
        leaks = leaking_patients([r for r in rows if r.scan_id in assignment], assignment)
        for pid, splits in sorted(leaks.items()):
            print(f"patient {pid} is in {', '.join(sorted(splits))}")
        if missing:
            print(f"{len(missing)} scans of the manifest are not in the split file, e.g. {missing[0]}")
        if leaks or missing:
            return 1
        print(f"ok: {len(rows)} scans, no patient in two splits")
        return 0
    assignment = split_patients(rows, val=args.val, test=args.test, seed=args.seed)
    folds = kfold_patients(rows, k=args.folds, seed=args.seed) if args.folds else None
    out = write_split(rows, assignment, folds, split_path(args.manifest))
    print(summary_table(rows, assignment))
    print(f"split written to {out}")
    return 0


# --------------------------------------------------------------------------- preprocess
def _add_preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config TOML: its [data] manifest and [preprocess] section are used")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU core)")


def _run_preprocess(args: argparse.Namespace) -> int:
    from ctcovid.config import apply_overrides, load_toml
    from ctcovid.data.cache import PreprocessCache
    from ctcovid.data.manifest import read_manifest
    from ctcovid.train.config import run_config_from_dict

    cfg = run_config_from_dict(apply_overrides(load_toml(args.config), args.set), Path(args.config).parent)
    rows = read_manifest(cfg.data.manifest, labels=list(cfg.data.label_names()))
    root = Path(cfg.data.manifest).parent
    cache = PreprocessCache(cfg.data.cache_dir or root / ".ctcovid_cache", cfg.preprocess, root)
    built = cache.build(rows, workers=args.workers or (os.cpu_count() or 1), progress=_cache_progress())
    print(f"cache {cache.dir}: {len(rows)} scans, {built} built now, {len(rows) - built} already there")
    return 0


# --------------------------------------------------------------------------- train
def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config TOML (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 --set model.name=r3d_34")
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_last.pt")


def _run_train(args: argparse.Namespace) -> int:
    from ctcovid.config import apply_overrides, load_toml
    from ctcovid.train.config import run_config_from_dict
    from ctcovid.train.run import fit

    raw = apply_overrides(load_toml(args.config), args.set)
    cfg = run_config_from_dict(raw, Path(args.config).parent)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    result = fit(cfg, out, resume=args.resume, config_dict=cfg.to_dict(),
                 batch_progress=_batch_progress(cfg.train.epochs), cache_progress=_cache_progress())
    last = result.history[-1] if result.history else {}
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun only rank 0 reports
    print(f"trained {result.epochs_run} epoch(s) into {out}; best {result.best}; last {last}")
    return 0


def _cache_progress() -> Callable[[int, int], None]:
    state = {"bar": None}

    def tick(done: int, total: int) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc="preprocess", unit="scan")
            bar = state["bar"]
            bar.n = done  # type: ignore[attr-defined]
            bar.refresh()  # type: ignore[attr-defined]
            if done >= total:
                bar.close()  # type: ignore[attr-defined]
        elif done == total or done % max(1, total // 4) == 0:
            print(f"preprocess: {done}/{total} scans cached", file=sys.stderr)

    return tick


def _batch_progress(epochs: int) -> Callable[[int], Callable[[int, int, dict[str, float]], None]]:
    """A per-epoch progress bar (loss, samples/s, ETA) on a TTY; nothing per batch otherwise."""

    def for_epoch(epoch: int) -> Callable[[int, int, dict[str, float]], None]:
        bar: Any = None

        def tick(done: int, total: int, stats: dict[str, float]) -> None:
            nonlocal bar
            if not sys.stderr.isatty():
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
            bar.n = done
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=True)
            if done >= total:
                bar.close()

        return tick

    return for_epoch


# --------------------------------------------------------------------------- demo
DEMO_CONFIG: dict[str, Any] = {
    # Kept equal to configs/demo_synthetic.toml (a test checks it). Small inputs: minutes on 2 cores.
    "data": {"task": "diagnosis", "val": 0.2, "test": 0.2},
    "preprocess": {"depth_mode": "stack", "chunk_depth": 8, "in_channels": 1, "size_hw": [64, 64],
                   "body_crop": True},
    "model": {"name": "r3d_18"},
    "train": {"epochs": 8, "batch_size": 12, "lr": 1e-3, "step_size": 6, "gamma": 0.1,
              "sampler": "class_uniform", "best_metric": "val_accuracy"},
}


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="working folder (default ./demo_out)")
    p.add_argument("--n", type=int, default=60, help="synthetic scans to generate (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["dicom", "png"], default="dicom", help="how the cohort is written")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the demo's training config, e.g. --set train.epochs=2")


def _run_demo(args: argparse.Namespace) -> int:
    """Synthetic end to end: generate, import, split, preprocess + train, evaluate on the test split."""
    import time

    from ctcovid.config import apply_overrides
    from ctcovid.data.cohorts import import_cohort
    from ctcovid.data.manifest import summary_table, write_manifest
    from ctcovid.data.splits import split_path, split_patients, write_split
    from ctcovid.data.synthetic import SynthConfig, generate_cohort
    from ctcovid.evaluate.report import evaluate_checkpoint
    from ctcovid.train.config import run_config_from_dict
    from ctcovid.train.run import fit

    t0 = time.perf_counter()
    out = Path(args.out)
    data_dir = out / "cohort"
    print(f"[1/5] generating {args.n} synthetic chest CT scans ({args.format}, CC-CCII layout) in {data_dir}")
    with _progress(args.n, "synth") as tick:
        generate_cohort(data_dir, SynthConfig(n=args.n, task="diagnosis", format=args.format, seed=args.seed),
                        progress=tick)
    print("[2/5] importing the cohort as a user would import CC-CCII")
    result = import_cohort("cc-ccii", str(data_dir), min_slices=8)
    manifest = write_manifest(result.rows, data_dir / "manifest.csv")
    print(f"      found {result.found} scans: imported {len(result.rows)}, skipped {len(result.skipped)}")
    print("[3/5] patient-level split (train/val/test = 60/20/20, stratified)")
    assignment = split_patients(result.rows, val=0.2, test=0.2, seed=args.seed)
    write_split(result.rows, assignment, None, split_path(manifest))
    print(summary_table(result.rows, assignment))
    raw = apply_overrides({**DEMO_CONFIG, "data": {**DEMO_CONFIG["data"], "manifest": str(manifest.resolve())}},
                          args.set)
    cfg = run_config_from_dict(raw)
    run_dir = out / "run"
    print(f"[4/5] training {cfg.model.name} for {cfg.train.epochs} epochs on depth-{cfg.preprocess.chunk_depth} chunks "
          f"-> {run_dir}")
    fit(cfg, run_dir, config_dict=cfg.to_dict(), batch_progress=_batch_progress(cfg.train.epochs),
        cache_progress=_cache_progress())
    print("[5/5] evaluating the best checkpoint on the held-out test patients")
    report = evaluate_checkpoint(run_dir / "checkpoint_best.pt", manifest, split="test")
    (run_dir / "test_metrics.json").write_text(json.dumps(report, indent=2))
    scan = report["scan"]
    print(f"      test scans: {scan['n']}  accuracy {scan['accuracy']:.3f}  macro-F1 {scan['f1_macro']:.3f}  "
          f"AUROC {scan['auroc'] if scan['auroc'] is None else round(scan['auroc'], 3)}")
    labels = report["labels"]
    print("      confusion (rows = truth, columns = prediction): " + " ".join(labels))
    for lab, row in zip(labels, scan["confusion"]):
        print(f"      {lab:<7} {row}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; run folder {run_dir}")
    return 0


# --------------------------------------------------------------------------- plumbing
class _progress:
    """tqdm progress bar on a TTY, a few plain log lines otherwise (CI logs stay readable)."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self._bar = total, desc, None
        self._last_pct = -1

    def __enter__(self) -> Callable[[int, int], None]:
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="scan")
        return self._tick

    def _tick(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            return
        pct = int(100 * done / max(total, 1)) // 25 * 25
        if pct != self._last_pct:
            self._last_pct = pct
            print(f"{self.desc}: {done}/{total}", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "demo": ("synthetic end-to-end run (no data needed)", _add_demo, _run_demo),
    "import": ("turn a dataset folder into a checked manifest CSV", _add_import, _run_import),
    "inspect": ("read a scan and report its geometry, HU range and warnings", _add_inspect, _run_inspect),
    "preprocess": ("preprocess and cache every scan of a config's manifest", _add_preprocess, _run_preprocess),
    "split": ("patient-level train/val/test split of a manifest", _add_split, _run_split),
    "train": ("train a model from a config file", _add_train, _run_train),
    "synth": ("generate a synthetic chest CT cohort", _add_synth, _run_synth),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctcovid", description="COVID-19 diagnosis and severity from chest CT with 3D CNNs."
    )
    parser.add_argument("--version", action="version", version=f"ctcovid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command][2](args)
    except CtcovidError as e:
        print(f"ctcovid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctcovid {args.command}: interrupted", file=sys.stderr)
        return 130
