"""Evaluation commands: evaluate (metrics + report), sweep (grids of runs -> paper tables), compare."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ctcovid.cli.progress import batch_progress, cache_progress


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="default: test")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="patient-bootstrap resamples of the 95%% CIs (0: none; default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="run folder (its checkpoint_best.pt) or a checkpoint .pt file")
    p.add_argument("--manifest", help="manifest CSV (default: the one the model was trained on)")
    p.add_argument("--split-file", help="split CSV (default: the run's split.csv on its own manifest)")
    p.add_argument("--out", help="report folder (default <run folder>/eval_<split>[_<checkpoint name>])")
    p.add_argument(
        "--aggregate",
        choices=["mean", "majority"],
        default="mean",
        help="chunks -> scan: mean probability (default) or majority vote of chunk predictions",
    )
    p.add_argument(
        "--positive",
        default="auto",
        help="class of the binary 'positive vs rest' metrics (default: NCP when a label; 'none')",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_common(p)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ctcovid.evaluate.report import evaluate_checkpoint, write_report

    target = Path(args.target)
    run_dir = target if target.is_dir() else target.parent
    result = evaluate_checkpoint(
        target,
        args.manifest,
        split=args.split,
        split_file=args.split_file,
        aggregate=args.aggregate,
        positive=None if args.positive == "none" else args.positive,
        n_resamples=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    # Another checkpoint than the best gets its own folder, so it never overwrites the best's report.
    suffix = "" if target.is_dir() or target.name == "checkpoint_best.pt" else f"_{target.stem}"
    out = Path(args.out) if args.out else run_dir / f"eval_{args.split}{suffix}"
    written = write_report(result, out, run_dir=run_dir)
    print(
        f"{result['model']} on the {args.split} split: {result['n_patients']} patients, "
        f"{result['n_scans']} scans, {result['n_chunks']} inputs ({result['aggregate']} per scan)"
    )
    for level in ("scan", "patient"):
        print(f"  {level:<8} {_line(result, level)}")
    excluded = result.get("excluded") or {}
    if excluded.get("count"):
        first = excluded["scans"][0]
        print(
            f"  excluded {excluded['count']} scan(s) that give no model input (in metrics.json and the "
            f"report), e.g. {first['scan_id']}: {first['reason']}"
        )
    for line in trust_lines(result):
        print(f"  {line}")
    print(f"report: {written['report_html']}  (also report.md, metrics.json, {len(written) - 3} plots)")
    return 0


def trust_lines(result: dict[str, Any]) -> list[str]:
    """Calibration and referral in two lines (evaluate and the demo print them)."""
    cal, ref = result.get("calibration"), result.get("referral")
    if not cal or not ref:
        return []

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = []
    if cal["fitted"]:
        lines.append(
            f"calibration: temperature {cal['temperature']:.2f}, ECE {f(cal['ece_before'])} -> "
            f"{f(cal['ece_after'])}, NLL {f(cal['nll_before'])} -> {f(cal['nll_after'])}"
        )
    else:
        lines.append("calibration: none in this checkpoint (run 'ctcovid calibrate' to add it)")
    why = ", ".join(f"{k} {v}" for k, v in ref["reasons"].items() if v) or "none"
    lines.append(
        f"referral: {ref['n_referred']} of {ref['n_scans']} scans ({why}); accuracy on the others "
        f"{f(ref['accuracy_not_referred'])} (all scans {f(ref['accuracy_all'])})"
    )
    return lines


def _line(result: dict[str, Any], level: str) -> str:
    from ctcovid.evaluate.render import with_ci

    m, ci = result[level], result.get("ci", {}).get(level, {})
    parts = [
        f"accuracy {with_ci(m['accuracy'], ci.get('accuracy'))}",
        f"macro-F1 {with_ci(m['f1_macro'], ci.get('f1_macro'))}",
        f"AUROC {with_ci(m['auroc'], ci.get('auroc'))}",
    ]
    if m.get("binary"):
        b = m["binary"]
        parts.append(f"{b['positive']} recall {with_ci(b['recall'], ci.get('binary_recall'))}")
    if "kappa_quadratic" in m:
        parts.append(f"kappa {with_ci(m['kappa_quadratic'], ci.get('kappa_quadratic'))}")
    return "  ".join(parts)


# --------------------------------------------------------------------------- sweep
def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep TOML (see configs/sweeps/)")
    p.add_argument("--out", help="sweep folder (default runs/sweeps/<sweep name>)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override for every run, e.g. --set data.manifest=/data/CC-CCII/manifest.csv "
        "or --set evaluate.n_resamples=200",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    p.add_argument("--device", default="auto", help="evaluation device (training: train.device)")


def _run_sweep(args: argparse.Namespace) -> int:
    from ctcovid.evaluate.sweep import load_sweep, run_state, run_sweep

    sweep = load_sweep(args.sweep, args.set)
    out = Path(args.out or Path("runs") / "sweeps" / Path(args.sweep).stem)
    if args.dry_run:
        print(f"{len(sweep.runs)} runs -> {out} (table {sweep.table})")
        for run in sweep.runs:
            values = " ".join(f"{k}={v}" for k, v in run.values.items())
            print(f"  {run.name:<32} {run_state(run, out / run.name):<8} {values}")
        return 0

    def on_event(what: str, i: int, total: int, name: str) -> None:
        print(f"[{i + 1}/{total}] {name}: {what}", flush=True)

    epochs = max(r.config.train.epochs for r in sweep.runs)
    rows = run_sweep(
        sweep,
        out,
        on_event=on_event,
        batch_progress=batch_progress(epochs),
        cache_progress=cache_progress(),
        device=args.device,
    )
    print((out / "table.md").read_text())
    print(f"{len(rows)}/{len(sweep.runs)} runs tabulated; table.md, table.html, table.csv and plots in {out}")
    return 0 if len(rows) == len(sweep.runs) else 1


# --------------------------------------------------------------------------- compare
def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders, eval folders or metrics.json files (two or more)")
    p.add_argument("--manifest", help="evaluate runs that have no eval_<split>/ on this manifest")
    p.add_argument("--level", choices=["scan", "patient"], default="scan", help="default: scan")
    p.add_argument("--out", help="also write compare.md, compare.html and compare.json here")
    _add_common(p)


def _run_compare(args: argparse.Namespace) -> int:
    from ctcovid.evaluate.compare import compare_evaluations, comparison_document, load_evaluation

    evals = [
        load_evaluation(r, split=args.split, manifest=args.manifest, n_resamples=args.bootstrap)
        for r in args.runs
    ]
    names = _names(args.runs)
    comparison = compare_evaluations(
        evals, names, level=args.level, n_resamples=args.bootstrap, seed=args.seed
    )
    doc = comparison_document(comparison)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        doc.write(out / "compare.md", out / "compare.html")
        (out / "compare.json").write_text(json.dumps(comparison, indent=2))
    print(doc.markdown(Path.cwd()))
    return 0


def _names(paths: list[str]) -> list[str]:
    """Short distinct names: the run folder name (eval folders and metrics.json map to their run)."""
    names = []
    for p in map(Path, paths):
        if p.suffix == ".json":
            p = p.parent
        if p.name.startswith("eval_"):
            p = p.parent
        names.append(p.name or str(p))
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


COMMANDS = {
    "evaluate": (
        "evaluate a checkpoint: metrics (CIs), report.md/.html and plots",
        _add_evaluate,
        _run_evaluate,
    ),
    "sweep": ("train and evaluate a grid of runs; write the papers' tables", _add_sweep, _run_sweep),
    "compare": ("compare evaluated runs: side-by-side metrics and paired tests", _add_compare, _run_compare),
}
