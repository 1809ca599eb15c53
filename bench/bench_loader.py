"""Data loading throughput against what training consumes, measured side by side in one run.

    python bench/bench_loader.py [--scans 12] [--samples 48] [--work DIR] [--quick]

Synthetic chest CTs (``--scans`` of 80 x 256 x 256 HU, written once as ``.npy`` to ``--work``) are
preprocessed into a :class:`~ctcovid.data.cache.PreprocessCache` for the two training inputs of
``bench_train_step.py``:

* ``volume``: whole scans uniformized to 40 slices of 128 x 128, one channel, batch 1
  (COVID-Net CT-S style);
* ``chunks``: 4-slice chunks of 224 x 224 with three windows, batch 8 (the diagnosis paper's
  depth-4 input).

For each, the loader of ``fit`` (:class:`~ctcovid.data.dataset.CachedDataset` over the memory-mapped
cache, the shuffled batch sampler, a ``DataLoader``) is timed with and without augmentation and
with 0 and 2 worker processes: samples/s over ``--samples`` samples after the first batch (over as
many epochs as that takes; workers restart every epoch, as in ``fit``, and that is counted), and
the time to the first batch (DataLoader creation and worker start-up).
The training step of r3d_18 as ``fit`` runs it (``ctcovid.train.speed.plan_execution``) is timed at
the same batch shape in the same run; the ratio says how many times faster than training the
loader delivers. Each augmentation transform is also timed alone on one sample.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from _timing import best_of
from ctcovid.data.cache import PreprocessCache
from ctcovid.data.dataset import CachedDataset
from ctcovid.data.manifest import ManifestRow
from ctcovid.data.samplers import ShuffleBatchSampler
from ctcovid.models import create_model
from ctcovid.preprocess import PreprocessConfig
from ctcovid.preprocess.augment import AugmentConfig, build_augment, rotate_scale_inplane
from ctcovid.train import speed

SCAN_SHAPE = (80, 256, 256)
LABELS = ("NCP", "CP", "Normal")
SETUPS: dict[str, tuple[PreprocessConfig, int]] = {
    "volume": (PreprocessConfig(depth=40, size_hw=(128, 128)), 1),
    "chunks": (
        PreprocessConfig(
            windows_hu=((-600.0, 1500.0), (40.0, 400.0), (-160.0, 240.0)),
            in_channels=3,
            depth_mode="stack",
            chunk_depth=4,
            size_hw=(224, 224),
        ),
        8,
    ),
}


def machine_info() -> list[str]:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True
        ).stdout.strip()
        rev += " + local changes" if dirty else ""
    except OSError:
        rev = "unknown"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"platform: {platform.platform()}  python {platform.python_version()}  commit {rev}",
        f"cpu: {cpu}; os.cpu_count()={os.cpu_count()}, torch threads={torch.get_num_threads()}, load average {load:.1f}",
        f"torch {torch.__version__}, numpy {np.__version__}",
    ]


def write_scans(work: Path, n: int) -> list[ManifestRow]:
    from ctcovid.synth.cohort import synth_case

    folder = work / "scans"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        path = folder / f"scan_{i:03d}.npy"
        if not path.is_file():
            score = 2 if label == "NCP" else None
            case = synth_case(label, rng=np.random.default_rng(i), shape=SCAN_SHAPE, severity_score=score)
            np.save(path, case.volume.voxels.astype(np.float32))
        rows.append(ManifestRow(f"scan_{i:03d}", f"p{i:03d}", str(path.relative_to(work)), label, format="numpy",
                                n_slices=SCAN_SHAPE[0]))  # fmt: skip
    return rows


def loader_rate(ds: CachedDataset, batch_size: int, workers: int, samples: int) -> tuple[float, float]:
    """Samples/s after the first batch, and seconds to the first batch (worker start-up included)."""
    sampler = ShuffleBatchSampler(len(ds), batch_size, seed=0)
    seen, epoch = 0, 0
    t_start = time.perf_counter()
    first = steady_t0 = None
    while seen < samples:
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers)
        for x, _y, _meta in loader:
            now = time.perf_counter()
            if first is None:
                first, steady_t0 = now - t_start, now
            else:
                seen += x.shape[0]
            if seen >= samples:
                break
        epoch += 1
    assert first is not None and steady_t0 is not None
    return seen / (time.perf_counter() - steady_t0), first


def train_rate(shape: tuple[int, ...], reps: int) -> tuple[float, str]:
    """Samples/s of the r3d_18 training step as ``fit`` runs it (best of ``reps`` steps)."""
    torch.manual_seed(0)
    model = create_model("r3d_18", in_channels=shape[1])
    cpu = torch.device("cpu")
    plan = speed.plan_execution(
        model, cpu, precision="auto", channels_last="auto", compile=False, shape=shape
    )
    x = torch.rand(shape)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 3, (shape[0],))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=plan.fused_optimizer or None)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.autocast_dtype is not None):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return shape[0] / min(times[1:]), "; ".join(plan.notes)


def augment_breakdown(sample: np.ndarray) -> dict[str, float]:
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    noise = np.float32(cfg.noise_std)
    return {
        "flip x": best_of(lambda: np.flip(sample, axis=3).copy()),
        "rotate + scale": best_of(lambda: rotate_scale_inplane(sample, 7.0, 1.05)),
        "intensity": best_of(lambda: sample * np.float32(1.05) + np.float32(0.02)),
        "noise": best_of(lambda: sample + noise * rng.standard_normal(sample.shape, dtype=np.float32)),
        "whole augment": best_of(lambda: build_augment(cfg)(sample, np.random.default_rng(1))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=12)
    ap.add_argument("--samples", type=int, default=48, help="samples timed per loader configuration")
    ap.add_argument("--work", default="/tmp/ctcovid-bench-loader", help="folder for the scans and the cache")
    ap.add_argument("--quick", action="store_true", help="fewer samples and training steps")
    args = ap.parse_args()
    if args.quick:
        args.samples = min(args.samples, 16)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for line in machine_info():
        print(line)
    t0 = time.perf_counter()
    rows = write_scans(work, args.scans)
    print(f"{len(rows)} synthetic scans of {'x'.join(map(str, SCAN_SHAPE))} HU in {work / 'scans'} "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    augment = build_augment(AugmentConfig())
    for name, (cfg, batch) in SETUPS.items():
        cache = PreprocessCache(work / "cache", cfg, work)
        t0 = time.perf_counter()
        built = cache.build(rows, workers=1)
        plain = CachedDataset(rows, cache, LABELS)
        augmented = CachedDataset(rows, cache, LABELS, augment=augment, seed=0)
        x0 = plain[0][0]
        shape = (batch, *x0.shape)
        print(f"\n## {name}: samples {tuple(x0.shape)}, batch {batch}, {len(plain)} samples in the cache "
              f"(built {built} entries in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        train, notes = train_rate(shape, 2 if args.quick else 3)
        print(f"training consumes {train:.2f} samples/s (r3d_18 step, {notes or 'fp32'}; fused Adam)")
        print(f"{'loader':<22} {'samples/s':>10} {'x training':>11} {'first batch s':>14}")
        rates = []
        for aug in (False, True):
            for workers in (0, 2):
                rate, first = loader_rate(augmented if aug else plain, batch, workers, args.samples)
                rates.append(rate)
                label = f"{'augment' if aug else 'plain'}, {workers} workers"
                print(f"{label:<22} {rate:>10.1f} {rate / train:>10.1f}x {first:>14.2f}", flush=True)
        train2, _ = train_rate(shape, 2 if args.quick else 3)
        print(f"training again after the loaders: {train2:.2f} samples/s")
        parts = augment_breakdown(x0.numpy())
        print(
            "augmentation of one sample, best of 5: "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts.items())
        )
        print(f"slowest loader / training: {min(rates) / max(train, train2):.1f}x (target >= 5x)")
    print("\nsamples/s: after the first batch; first batch: DataLoader creation to the first batch.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
