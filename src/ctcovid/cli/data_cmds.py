"""Data commands: inspect, synth, import, split, preprocess."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ctcovid.cli.progress import cache_progress, progress


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
    p.add_argument(
        "--slices",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=(20, 40),
        help="slices per scan, drawn in [LOW, HIGH] (default 20 40; real chest CTs: 250 400)",
    )
    p.add_argument("--size", type=int, default=64, help="in-plane pixels, square (default 64; real CT: 512)")
    p.add_argument(
        "--scans-per-patient", type=int, nargs=2, metavar=("LOW", "HIGH"), default=(1, 3),
        help="scans per patient, drawn in [LOW, HIGH] (default 1 3)",
    )  # fmt: skip


def _run_synth(args: argparse.Namespace) -> int:
    from ctcovid.synth.cohort import SynthConfig, generate_cohort

    cfg = SynthConfig(
        n=args.n,
        task=args.task,
        format=args.format,
        seed=args.seed,
        slices=tuple(args.slices),
        in_plane=(args.size, args.size),
        scans_per_patient=tuple(args.scans_per_patient),
    )
    with progress(args.n, "synth") as tick:
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
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
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
            raise ConfigError(
                f"unknown option {'.'.join(key)!r} for importer {args.kind!r}; valid: {', '.join(params) or 'none'}"
            )
        options[key[0]] = value
    with progress(1, f"import {args.kind}") as tick:
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
    p.add_argument(
        "--val",
        type=float,
        default=0.2,
        help="validation fraction of the patients without a split in the manifest (default 0.2)",
    )
    p.add_argument(
        "--test",
        type=float,
        default=0.2,
        help="test fraction of the same (default 0.2); scans with a 'split' in the manifest keep it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=0, help="also assign k folds (k >= 2)")
    p.add_argument(
        "--check", action="store_true", help="only check the existing split file; exit 1 on leakage"
    )


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
    kept = sum(1 for r in rows if r.split)
    if kept:
        print(
            f"{kept} scans kept the split given in the manifest; the other {len(rows) - kept} were assigned"
        )
    print(f"split written to {out}")
    return 0


# --------------------------------------------------------------------------- preprocess
def _add_preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config TOML: its [data] manifest and [preprocess] section are used")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU core)")
    p.add_argument(
        "--ignore-disk-space",
        action="store_true",
        help="build even when the estimated cache size exceeds the free disk space",
    )


def _run_preprocess(args: argparse.Namespace) -> int:
    from ctcovid.config import apply_overrides, load_toml
    from ctcovid.data.cache import PreprocessCache
    from ctcovid.data.manifest import read_manifest
    from ctcovid.train.config import run_config_from_dict

    cfg = run_config_from_dict(apply_overrides(load_toml(args.config), args.set), Path(args.config).parent)
    rows = read_manifest(cfg.data.manifest, labels=list(cfg.data.label_names()))
    root = Path(cfg.data.manifest).parent
    cache = PreprocessCache(cfg.data.cache_dir or root / ".ctcovid_cache", cfg.preprocess, root)
    plan = cache.plan(rows)
    print(plan.describe())
    if not args.ignore_disk_space:
        cache.check_space(rows)
    built = cache.build(rows, workers=args.workers or (os.cpu_count() or 1), progress=cache_progress())
    print(f"cache {cache.dir}: {len(rows)} scans, {built} built now, {len(rows) - built} already there")
    return 0


COMMANDS = {
    "inspect": ("read a scan and report its geometry, HU range and warnings", _add_inspect, _run_inspect),
    "synth": ("generate a synthetic chest CT cohort", _add_synth, _run_synth),
    "import": ("turn a dataset folder into a checked manifest CSV", _add_import, _run_import),
    "split": ("patient-level train/val/test split of a manifest", _add_split, _run_split),
    "preprocess": (
        "preprocess and cache every scan of a config's manifest",
        _add_preprocess,
        _run_preprocess,
    ),
}
