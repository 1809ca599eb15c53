"""Command-line interface: the only module that reads argv and writes to stdout.

Each subcommand is a pair of functions, ``_add_<name>(parser)`` and ``_run_<name>(args)``, and
imports what it needs lazily so ``ctcovid --help`` stays fast. User-facing errors
(:class:`~ctcovid.errors.CtcovidError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
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


# --------------------------------------------------------------------------- demo
def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="working folder (default ./demo_out)")
    p.add_argument("--n", type=int, default=60, help="synthetic scans to generate (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["dicom", "nifti", "png", "npy"], default="dicom")


def _run_demo(args: argparse.Namespace) -> int:
    """Synthetic end to end: generate a cohort, read every scan back, report what was read."""
    import csv

    from ctcovid.data.synthetic import SynthConfig, generate_cohort
    from ctcovid.io import load_volume

    out = Path(args.out)
    data_dir = out / "cohort"
    cfg = SynthConfig(n=args.n, task="diagnosis", format=args.format, seed=args.seed)
    print(f"[1/2] generating {args.n} synthetic chest CT scans ({args.format}) in {data_dir}")
    with _progress(args.n, "synth") as tick:
        summary = generate_cohort(data_dir, cfg, progress=tick)
    _print_summary(summary)

    with (data_dir / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"[2/2] reading the {len(rows)} scans back")
    per_label: dict[str, list[float]] = {}
    with _progress(len(rows), "read") as tick:
        for i, row in enumerate(rows):
            vol = load_volume(data_dir / row["path"])
            lung = vol.voxels[(vol.voxels > -950) & (vol.voxels < -400)]
            per_label.setdefault(row["label"], []).append(float(lung.mean()) if lung.size else float("nan"))
            tick(i + 1, len(rows))
    for label, means in sorted(per_label.items()):
        print(f"  {label:<7} scans={len(means):3d}  mean lung-range HU={sum(means) / len(means):8.1f}")
    print("demo: data generation and inspection done (training arrives with the training engine)")
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
    "inspect": ("read a scan and report its geometry, HU range and warnings", _add_inspect, _run_inspect),
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
