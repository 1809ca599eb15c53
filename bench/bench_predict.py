"""End-to-end latency of ``predict`` on a 300-slice 512x512 DICOM series, on this machine.

    python bench/bench_predict.py [--repeats 3] [--models r3d_18 ct_s50] [--work DIR] [--cli]

A synthetic chest CT (300 x 512 x 512, ~0.9 x 0.8 x 0.8 mm) is written once as an uncompressed
DICOM series (cached in ``--work``). For each model an untrained checkpoint is made whose
preprocessing produces the model's default input (registry ``default_input``: r3d_18 1x32x128x128,
ct_s50 1x40x128x128, z-uniformized, body crop on). Then ``Predictor.predict_path`` is timed from
the folder to the answer: read the 300 files, preprocess, run the network, with the breakdown.
Prints the first (cold) call, the median of ``--repeats`` warm calls, the model load time, and with
``--cli`` the wall time of the whole ``ctcovid predict`` command in a fresh process (imports and
model build included). Latency with untrained weights equals latency with trained ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _machine import cpu_name
from ctcovid.checkpoint import make_checkpoint, save_checkpoint
from ctcovid.models import create_model, model_info
from ctcovid.predict import Predictor
from ctcovid.preprocess import PreprocessConfig

SHAPE = (300, 512, 512)


def machine_info() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"platform: {platform.platform()}  python {platform.python_version()}",
        f"cpu: {cpu_name()}; os.cpu_count()={os.cpu_count()}, usable={usable}, torch threads={torch.get_num_threads()}",
        f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), numpy {np.__version__}",
    ]


def dicom_series(work: Path) -> Path:
    folder = work / "dicom_300x512x512"
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == SHAPE[0]:
        return folder
    from ctcovid.io import write_dicom_series
    from ctcovid.synth.cohort import synth_case

    t0 = time.perf_counter()
    case = synth_case("NCP", rng=np.random.default_rng(0), shape=SHAPE, severity_score=4)
    write_dicom_series(case.volume, folder)
    print(f"wrote the synthetic series to {folder} in {time.perf_counter() - t0:.0f} s")
    return folder


def checkpoint_for(name: str, work: Path) -> Path:
    spec = model_info(name).default_input
    depth, h, w = spec.size
    pre = PreprocessConfig(in_channels=spec.in_channels, depth=depth, size_hw=(h, w))
    torch.manual_seed(0)
    model = create_model(name, in_channels=spec.in_channels, num_classes=3)
    ckpt = make_checkpoint(model, name=name, kwargs={"in_channels": spec.in_channels, "num_classes": 3},
                           labels=["NCP", "CP", "Normal"], task="diagnosis", preprocess=pre.to_dict())  # fmt: skip
    return save_checkpoint(ckpt, work / f"{name}_untrained.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["r3d_18", "ct_s50"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/ctcovid-bench-predict", help="cache folder for the series")
    ap.add_argument("--cli", action="store_true", help="also time the ctcovid predict command end to end")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for line in machine_info():
        print(line)
    series = dicom_series(work)
    size_mb = sum(f.stat().st_size for f in series.iterdir()) / 2**20
    print(
        f"input: {SHAPE[0]} DICOM files, {SHAPE[1]}x{SHAPE[2]}, {size_mb:.0f} MiB, explicit VR little endian\n"
    )
    header = f"{'model':<8} {'input':<14} {'load s':>7} {'cold s':>7} {'warm s':>7} {'read':>6} {'prep':>6} {'infer':>6}"
    print(header + ("  cli s" if args.cli else ""))
    for name in args.models:
        ckpt = checkpoint_for(name, work)
        t0 = time.perf_counter()
        predictor = Predictor.from_checkpoint(ckpt)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        predictor.predict_path(series)
        cold_s = time.perf_counter() - t0
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pred = predictor.predict_path(series)
            runs.append((time.perf_counter() - t0, pred.timings_s))
        warm_s = statistics.median(r[0] for r in runs)
        parts = {k: statistics.median(r[1][k] for r in runs) for k in ("read", "preprocess", "inference")}
        c, d, h, w = predictor.input_shape()
        line = (
            f"{name:<8} {f'{c}x{d}x{h}x{w}':<14} {load_s:>7.2f} {cold_s:>7.2f} {warm_s:>7.2f} "
            f"{parts['read']:>6.2f} {parts['preprocess']:>6.2f} {parts['inference']:>6.2f}"
        )
        if args.cli:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ctcovid", "predict", str(series), "--checkpoint", str(ckpt)],
                           check=True, capture_output=True)  # fmt: skip
            line += f"  {time.perf_counter() - t0:>5.2f}"
        print(line, flush=True)
    print(
        "\nwarm = median of", args.repeats, "calls of Predictor.predict_path (read + preprocess + inference);"
    )
    print("cold = the first call (allocator and oneDNN warm-up); load = Predictor.from_checkpoint.")


if __name__ == "__main__":
    main()
