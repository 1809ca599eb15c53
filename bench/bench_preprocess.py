"""Preprocessing speed, measured side by side in one run.

    python bench/bench_preprocess.py [--repeats 5] [--skip-scipy]

1. ctcovid's pipeline (body crop + table mask + z-uniformization to 40 slices + in-plane resize to
   256x256 + lung window) on a synthetic 300x512x512 HU chest, against the equivalent MONAI chain
   (ScaleIntensityRange + CropForeground + Resize to (40, 256, 256)) on the same in-memory array.
   Loading is excluded from both.
2. Cubic-spline z-uniformization (one matrix product) against scipy's order-3 zoom of the whole
   volume (the reference it reproduces), with the largest difference in HU.

Prints the machine, library versions, absolute times (median of ``--repeats``) and ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import scipy.ndimage as ndi
import torch

from ctcovid.preprocess import (
    PreprocessConfig,
    build_pipeline,
    depth,
    find_body,
    resize_inplane,
    uniformize_depth,
)
from ctcovid.types import Volume

SHAPE = (300, 512, 512)
SPACING_MM = (1.0, 0.7, 0.7)


def synthetic_chest(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A realistic-ish int16-range HU chest: body, lungs with vessels, spine, mattress and table."""
    d, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vol = np.empty(shape, dtype=np.float32)
    cy, cx = 0.45 * h, 0.5 * w
    table_top = int(cy + 0.31 * h) + 10
    for k in range(d):
        t = k / (d - 1)  # 0 inferior .. 1 superior
        ry, rx = 0.27 * h * (1 - 0.1 * t), 0.40 * w * (1 - 0.15 * t)
        sl = np.full((h, w), -1000.0, dtype=np.float32)
        body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        sl[body] = 40.0
        fat = body & (((yy - cy) / (ry - 12)) ** 2 + ((xx - cx) / (rx - 12)) ** 2 > 1)
        sl[fat] = -100.0
        lung_scale = np.sin(np.pi * min(max((t - 0.1) / 0.85, 0.0), 1.0))  # lungs grow then shrink
        if lung_scale > 0.05:
            for side in (-1, 1):
                lung = ((yy - cy + 0.02 * h) / (0.19 * h * lung_scale)) ** 2 + (
                    (xx - cx - side * 0.19 * w) / (0.13 * w * lung_scale)
                ) ** 2 <= 1
                sl[lung] = -860.0
        spine = ((yy - cy - 0.2 * h) / 18) ** 2 + ((xx - cx) / 22) ** 2 <= 1
        sl[spine] = 700.0
        sl[table_top - 8 : table_top, int(0.12 * w) : int(0.88 * w)] = -920.0  # foam mattress
        sl[table_top : table_top + 4, int(0.05 * w) : int(0.95 * w)] = 300.0  # carbon table top
        vol[k] = sl
    vessels = rng.random(shape, dtype=np.float32) < 0.002  # bright specks inside the lungs
    vol[vessels & (vol < -800) & (vol > -900)] = 50.0
    vol += rng.standard_normal(shape, dtype=np.float32) * 20.0
    np.clip(np.round(vol, out=vol), -1024, 3071, out=vol)  # what int16 CT stores
    return vol


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine_info() -> list[str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    lines = [
        f"platform: {platform.platform()}  python {platform.python_version()}",
        f"cpu: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"torch threads={torch.get_num_threads()}",
        f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}",
        f"git commit: {commit or 'unknown'}",
    ]
    try:
        import monai

        lines.append(f"monai {monai.__version__}")
    except ImportError:
        lines.append("monai: not installed")
    return lines


def monai_chain(mode: str) -> Callable[[np.ndarray], Any] | None:
    try:
        from monai.transforms import Compose, CropForeground, Resize, ScaleIntensityRange
    except ImportError:
        return None
    threshold = (-500.0 + 1350.0) / 1500.0  # -500 HU after the lung-window scaling
    margin_vox = int(np.ceil(10.0 / SPACING_MM[1]))
    chain = Compose(
        [
            ScaleIntensityRange(a_min=-1350.0, a_max=150.0, b_min=0.0, b_max=1.0, clip=True),
            CropForeground(select_fn=lambda x: x > threshold, margin=margin_vox),
            Resize(spatial_size=(40, 256, 256), mode=mode),
        ]
    )
    return lambda vox: chain(vox[None])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-scipy", action="store_true", help="skip the slow scipy 3D zoom reference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    print("\n".join(machine_info()))
    start = time.perf_counter()
    vox = synthetic_chest()
    volume = Volume(vox, spacing_mm=SPACING_MM)
    print(
        f"synthetic chest {vox.shape} {vox.dtype}, HU {vox.min():.0f}..{vox.max():.0f} "
        f"(built in {time.perf_counter() - start:.1f} s)\n"
    )

    print("== 1. to a (1, 40, 256, 256) model input ==")
    results: dict[str, float] = {}
    for fit in ("pad", "stretch"):
        pipeline = build_pipeline(PreprocessConfig(fit=fit))
        t, out = timed(lambda p=pipeline: p(volume), args.repeats)
        results[f"ctcovid fit={fit}"] = t
        print(
            f"ctcovid (fit={fit:7s}) {t * 1000:8.1f} ms  -> {tuple(out.shape)} {out.dtype} [{out.min():.3f}, {out.max():.3f}]"
        )
    body = find_body(vox, SPACING_MM)
    t_body, _ = timed(lambda: find_body(vox, SPACING_MM), args.repeats)
    rows = vox[:, body.box.y0 : body.box.y1, :]
    t_unif, small = timed(lambda: uniformize_depth(rows, 40), args.repeats)
    t_resize, _ = timed(
        lambda: resize_inplane(small[:, :, body.box.x0 : body.box.x1], (256, 256)), args.repeats
    )
    print(
        f"  of which: find_body {t_body * 1000:.1f} ms, uniformize rows {t_unif * 1000:.1f} ms, "
        f"resize {t_resize * 1000:.1f} ms"
    )
    for mode in ("trilinear", "area"):
        chain = monai_chain(mode)
        if chain is None:
            print("MONAI: not installed, comparison skipped")
            break
        t, out = timed(lambda c=chain: c(vox), max(1, args.repeats // 2))
        print(
            f"MONAI (Resize mode={mode:9s}) {t * 1000:8.1f} ms  -> {tuple(out.shape)}   "
            f"ratio MONAI / ctcovid = {t / results['ctcovid fit=pad']:.1f}x (pad), "
            f"{t / results['ctcovid fit=stretch']:.1f}x (stretch)"
        )

    print("\n== 2. z-uniformization 300 -> 40 slices, cubic spline, whole 300x512x512 volume ==")
    depth._zoom_operator.cache_clear()  # time the first call too, matrix construction included
    start = time.perf_counter()
    mine = uniformize_depth(vox, 40)
    t_cold = time.perf_counter() - start
    t_warm, mine = timed(lambda: uniformize_depth(vox, 40), args.repeats)
    print(
        f"ctcovid matrix product   {t_warm * 1000:8.1f} ms (first call, building the matrix: {t_cold * 1000:.1f} ms)"
    )
    if args.skip_scipy:
        return
    start = time.perf_counter()
    ref = ndi.zoom(vox, (40 / vox.shape[0], 1, 1), order=3)
    t_scipy = time.perf_counter() - start
    print(f"scipy zoom order=3       {t_scipy * 1000:8.1f} ms (one run)")
    print(
        f"ratio scipy / ctcovid = {t_scipy / t_warm:.0f}x (cold: {t_scipy / t_cold:.0f}x); "
        f"max |difference| = {np.abs(mine - ref).max():.2e} HU"
    )


if __name__ == "__main__":
    main()
