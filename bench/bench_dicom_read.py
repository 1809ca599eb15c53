"""Benchmark: ctcovid's DICOM series reader against SimpleITK's, side by side in one run.

Writes a synthetic 300-slice 512x512 int16 series (uncompressed) to a temporary folder with
ctcovid's writer, then times warm reads (best of N, after one untimed read that fills the page
cache) of ``ctcovid.io.load_volume`` and of SimpleITK's ``ImageSeriesReader``
(``GetGDCMSeriesFileNames`` + ``Execute``), and prints both times and the ratio
``sitk_time / ours`` (> 1: ours is faster). The real JPEG Lossless series from ../shared/data is
timed too when present. Target: ours <= 0.5 s for the synthetic series.

Run: ``python bench/bench_dicom_read.py [--slices 300] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import best_of
from ctcovid.io import CANONICAL_DIRECTION, load_volume, write_dicom_series
from ctcovid.types import Volume

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> str:
    import torch

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (
        f"platform {platform.platform()} | python {platform.python_version()} | cpus {os.cpu_count()} | "
        f"torch {torch.__version__} | numpy {np.__version__} | git {commit}"
    )


def sitk_read(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayViewFromImage(reader.Execute())


def compare(name: str, folder: Path, repeats: int) -> tuple[float, float]:
    ours = best_of(lambda: load_volume(folder), repeats)
    theirs = best_of(lambda: sitk_read(folder), repeats)
    print(f"{name:<34} ours {ours:7.3f} s | SimpleITK {theirs:7.3f} s | sitk/ours {theirs / ours:5.2f}x")
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_info())

    rng = np.random.default_rng(0)
    vox = rng.integers(-1024, 1500, size=(args.slices, 512, 512), dtype=np.int16).astype(np.float32)
    vol = Volume(vox, spacing_mm=(1.0, 0.7, 0.7), direction=CANONICAL_DIRECTION)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_dicom_series(vol, folder)
        print(f"wrote {args.slices} x 512 x 512 int16 (explicit VR LE) in {time.perf_counter() - t0:.2f} s")
        assert np.array_equal(load_volume(folder).voxels, vox), "read back differs from what was written"
        ours, _ = compare(f"synthetic {args.slices}x512x512", folder, args.repeats)
        print(f"target ours <= 0.5 s: {'met' if ours <= 0.5 else 'NOT met'}")

    shared = Path(os.environ.get("CTCOVID_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    real = shared / "chest-ct-dicom-jpegls"
    if real.is_dir():
        compare("real chest 167x512x512 JPEG-LL", real, max(1, args.repeats // 2))
    else:
        print(f"real series {real} absent: skipped")


if __name__ == "__main__":
    main()
