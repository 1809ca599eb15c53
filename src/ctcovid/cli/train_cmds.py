"""Training commands: train and the synthetic end-to-end demo."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ctcovid.cli.progress import batch_progress, cache_progress, progress


# --------------------------------------------------------------------------- train
def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config TOML (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 --set model.name=r3d_34",
    )
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_last.pt")
    p.add_argument(
        "--ignore-disk-space",
        action="store_true",
        help="build the preprocessing cache even when its estimated size exceeds the free disk space",
    )


def _run_train(args: argparse.Namespace) -> int:
    from ctcovid.config import apply_overrides, load_toml
    from ctcovid.train.config import run_config_from_dict
    from ctcovid.train.run import fit

    raw = apply_overrides(load_toml(args.config), args.set)
    cfg = run_config_from_dict(raw, Path(args.config).parent)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    result = fit(
        cfg,
        out,
        resume=args.resume,
        config_dict=cfg.to_dict(),
        batch_progress=batch_progress(cfg.train.epochs),
        cache_progress=cache_progress(),
        check_space=not args.ignore_disk_space,
    )
    last = result.history[-1] if result.history else {}
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun only rank 0 reports
    print(f"trained {result.epochs_run} epoch(s) into {out}; best {result.best}; last {last}")
    return 0


# --------------------------------------------------------------------------- calibrate
def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder (its best checkpoint)")
    p.add_argument("--out", metavar="FILE", help="write the calibrated checkpoint here (default: in place)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="reliability.KEY=VALUE",
        help="override the run's [reliability] settings, e.g. --set reliability.ood_quantile=0.99",
    )
    p.epilog = (
        "Training does this at its end; use it for checkpoints trained before, or to change the "
        "settings. Needs the run's manifest and split (read from the checkpoint and its folder)."
    )


def _run_calibrate(args: argparse.Namespace) -> int:
    from ctcovid.checkpoint import load_checkpoint
    from ctcovid.config import apply_overrides, from_dict
    from ctcovid.train.config import ReliabilityConfig
    from ctcovid.train.reliability import calibrate_checkpoint

    ck = load_checkpoint(args.checkpoint)
    raw = apply_overrides({"reliability": ck.get("config", {}).get("reliability", {})}, args.set)
    cfg = from_dict(ReliabilityConfig, raw.get("reliability", {}), "reliability")
    rel = calibrate_checkpoint(
        ck["path"], cfg=cfg, device=args.device, batch_size=args.batch_size, out=args.out
    )
    v = rel.get("validation", {})
    print(f"calibrated {args.out or ck['path']}")
    if v:
        print(
            f"  temperature {rel['temperature']:.3f}: validation NLL {v['nll_before']:.3f} -> {v['nll_after']:.3f}, "
            f"ECE {v['ece_before']:.3f} -> {v['ece_after']:.3f} ({v['scans']} scans)"
        )
    for method, o in rel.get("ood", {}).items():
        mark = " (used)" if method == rel["ood_method"] else ""
        print(
            f"  OOD {method}{mark}: threshold {o['threshold']:.4g} ({cfg.ood_quantile:.0%} of validation scans below)"
        )
    ref = rel.get("quality_reference")
    print(
        f"  quality reference: {ref['n'] if ref else 0} training scans; refer above uncertainty "
        f"{rel['refer_uncertainty']:.3f} (target risk {cfg.target_risk:g})"
    )
    return 0


# --------------------------------------------------------------------------- demo
DEMO_CONFIG: dict[str, Any] = {
    # Kept equal to configs/demo_synthetic.toml (a test checks it). Small inputs: minutes on 2 cores.
    "data": {"task": "diagnosis", "val": 0.2, "test": 0.2},
    "preprocess": {
        "depth_mode": "uniformize",
        "depth": 16,
        "in_channels": 1,
        "size_hw": [64, 64],
        "body_crop": True,
    },
    "model": {"name": "r3d_10"},
    "train": {
        "epochs": 20,
        "batch_size": 6,
        "lr": 1e-3,
        "step_size": 14,
        "gamma": 0.1,
        "sampler": "class_uniform",
        "best_metric": "val_accuracy",
        "ema_decay": 0.95,
        "precise_bn_batches": 5,
    },
}


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="working folder (default ./demo_out)")
    p.add_argument(
        "--n",
        type=int,
        default=150,
        help="synthetic scans (= patients) to generate (default 150: 30 held-out test patients)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["dicom", "png"], default="dicom", help="how the cohort is written")
    p.add_argument("--size", type=int, default=64, help="in-plane pixels of the generated scans (default 64)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the demo's training config, e.g. --set train.epochs=2",
    )


def _run_demo(args: argparse.Namespace) -> int:
    """Synthetic end to end: generate, import, split, preprocess + train, evaluate on the test split."""
    import time

    from ctcovid.cli.evaluate_cmds import trust_lines
    from ctcovid.config import apply_overrides
    from ctcovid.data.cohorts import import_cohort
    from ctcovid.data.manifest import summary_table, write_manifest
    from ctcovid.data.splits import split_path, split_patients, write_split
    from ctcovid.evaluate.report import evaluate_checkpoint, write_report
    from ctcovid.synth.cohort import SynthConfig, generate_cohort
    from ctcovid.train.config import run_config_from_dict
    from ctcovid.train.run import fit

    t0 = time.perf_counter()
    out = Path(args.out)
    data_dir = out / "cohort"
    print(f"[1/5] generating {args.n} synthetic chest CT scans ({args.format}, CC-CCII layout) in {data_dir}")
    with progress(args.n, "synth") as tick:
        generate_cohort(
            data_dir,
            # One scan per patient: the demo's few dozen training patients are then all different
            # people (with 1-3 scans each the net memorizes patients; `ctcovid synth` keeps 1-3).
            SynthConfig(
                n=args.n,
                task="diagnosis",
                format=args.format,
                seed=args.seed,
                scans_per_patient=(1, 1),
                in_plane=(args.size, args.size),
            ),
            progress=tick,
        )
    phases = {"generate": time.perf_counter() - t0}
    print("[2/5] importing the cohort as a user would import CC-CCII")
    result = import_cohort("cc-ccii", str(data_dir), min_slices=8)
    manifest = write_manifest(result.rows, data_dir / "manifest.csv")
    print(f"      found {result.found} scans: imported {len(result.rows)}, skipped {len(result.skipped)}")
    print("[3/5] patient-level split (train/val/test = 60/20/20, stratified)")
    assignment = split_patients(result.rows, val=0.2, test=0.2, seed=args.seed)
    write_split(result.rows, assignment, None, split_path(manifest))
    print(summary_table(result.rows, assignment))
    raw = apply_overrides(
        {**DEMO_CONFIG, "data": {**DEMO_CONFIG["data"], "manifest": str(manifest.resolve())}}, args.set
    )
    cfg = run_config_from_dict(raw)
    run_dir = out / "run"
    inputs = (
        f"depth-{cfg.preprocess.chunk_depth} chunks"
        if cfg.preprocess.depth_mode == "stack"
        else f"volumes of {cfg.preprocess.depth} slices"
    )
    phases["import + split"] = time.perf_counter() - t0 - sum(phases.values())
    print(f"[4/5] training {cfg.model.name} for {cfg.train.epochs} epochs on {inputs} -> {run_dir}")
    fit(
        cfg,
        run_dir,
        config_dict=cfg.to_dict(),
        batch_progress=batch_progress(cfg.train.epochs),
        cache_progress=cache_progress(),
    )
    phases["preprocess + train"] = time.perf_counter() - t0 - sum(phases.values())
    print("[5/5] evaluating the best checkpoint on the held-out test patients, explaining a COVID-19 scan")
    report = evaluate_checkpoint(run_dir / "checkpoint_best.pt", manifest, split="test")
    written = write_report(report, run_dir / "eval_test", run_dir=run_dir)
    scan = report["scan"]
    ci = report.get("ci", {}).get("scan", {}).get("accuracy") or {}
    interval = (
        f" [{ci['low']:.3f}, {ci['high']:.3f}] (95 % patient bootstrap)" if ci.get("low") is not None else ""
    )
    print(
        f"      test scans: {scan['n']}  accuracy {scan['accuracy']:.3f}{interval}  macro-F1 {scan['f1_macro']:.3f}  "
        f"AUROC {scan['auroc'] if scan['auroc'] is None else round(scan['auroc'], 3)}"
    )
    labels = report["labels"]
    print("      confusion (rows = truth, columns = prediction): " + " ".join(labels))
    for lab, row in zip(labels, scan["confusion"]):
        print(f"      {lab:<7} {row}")
    for line in trust_lines(report):
        print(f"      {line}")
    print(f"      report: {written['report_html']}")
    montage = _demo_montage(report, manifest, run_dir / "eval_test")
    if montage is not None:
        print(f"      explanation montage: {montage}")
    phases["evaluate"] = time.perf_counter() - t0 - sum(phases.values())
    print(
        f"demo finished in {time.perf_counter() - t0:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + f"); run folder {run_dir}"
    )
    return 0


def _demo_montage(report: dict[str, Any], manifest: Path, out: Path) -> Path | None:
    """Explain one held-out COVID-19 scan (the most confident correct one, else any) into ``out``."""
    from ctcovid.data.dataset import load_row_volume
    from ctcovid.data.manifest import read_manifest
    from ctcovid.errors import CtcovidError
    from ctcovid.predict import Predictor, explain

    labels = report["labels"]
    covid = [s for s in report["scans"] if s["label"] == "NCP"]
    if not covid or "NCP" not in labels:
        return None
    k = labels.index("NCP")
    best = max(covid, key=lambda s: (s["pred"] == "NCP", s["probs"][k]))
    row = next(r for r in read_manifest(manifest, labels=labels) if r.scan_id == best["scan_id"])
    predictor = Predictor.from_checkpoint(report["checkpoint"])
    try:
        e = explain(predictor, load_row_volume(row, manifest.parent), scan_id=row.scan_id, target="NCP")
    except CtcovidError as err:  # e.g. the scan is not assessable: the demo's result stands without it
        print(f"      no explanation montage: {err}")
        return None
    return e.save(out, "covid_example")["montage"]


COMMANDS = {
    "train": ("train a model from a config file", _add_train, _run_train),
    "calibrate": (
        "fit temperature scaling, OOD statistics and quality ranges into a checkpoint",
        _add_calibrate,
        _run_calibrate,
    ),
    "demo": (
        "synthetic end-to-end run, no data needed: generate a cohort, import, split, train, evaluate",
        _add_demo,
        _run_demo,
    ),
}
