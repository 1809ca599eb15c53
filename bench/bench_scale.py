"""What reproducing each paper costs: disk, preprocessing time, training time, memory, projected.

    python bench/bench_scale.py [--scans 2] [--slices 250 400] [--size 512] [--steps 1]
        [--diag-batch 32] [--sev-batch 6] [--no-train] [--out DIR] [--keep]

A synthetic cohort of realistic size (chest CTs of ``--slices`` slices at ``--size`` x ``--size``)
is written twice, as published: CC-CCII (PNG slices, ``<class>/<patient>/<scan>/``) and CNCB
(DICOM series, ``<patient>/<scan>/``). Each is imported with its importer, then preprocessed scan
by scan into the cache with its paper's recipe (``configs/diagnosis_cc-ccii.toml``,
``configs/severity_cncb_ct-s152.toml``), one process, timed per scan beside the time the plain
decoders need for the same files in the same run (Pillow for the PNGs, SimpleITK's
``ImageSeriesReader`` for the DICOM series). Then ``--steps`` training steps of each recipe
(r3d_18 at ``--diag-batch`` x 3 x 4 x 512 x 512, CT-S152 at ``--sev-batch`` x 1 x 40 x 256 x 256,
the execution plan ``fit`` uses, after one warm-up step) run in a subprocess each, which reports
its peak memory (max RSS).

The measured rates are projected onto the published cohorts: the diagnosis paper's 137,256 CC-CCII
slices of 691 patients (depth-4 chunks: 34,314 samples an epoch) and the severity paper's 267 CNCB
patients (one volume each). ``--gpu-diag-step`` / ``--gpu-sev-step`` give a step time measured on
a GPU with ``bench_train_step.py --device cuda`` at the same shapes, for the GPU column (defaults:
the H200 figures in bench/RESULTS.md; 0 leaves the column out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _machine import commit, cpu_name
from _timing import best_of

REPO = Path(__file__).resolve().parents[1]
DIAG_SLICES, DIAG_PATIENTS = 137_256, 691  # Li, Pei & Guo, CC-CCII subset
SEV_PATIENTS = 267  # COVID-Net CT-S, CNCB patients with severity scores

STEP_SCRIPT = """
import json, resource, sys, time, torch
from ctcovid.models import create_model
from ctcovid.train import speed
name, shape, steps = sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x")), int(sys.argv[3])
model = create_model(name, in_channels=shape[1])
plan = speed.plan_execution(model, torch.device("cpu"), precision="auto", channels_last="auto",
                            compile=False, shape=shape)
if plan.channels_last:
    model = model.to(memory_format=torch.channels_last_3d)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=plan.fused_optimizer)
x, y = torch.rand(shape), torch.arange(shape[0]) % 3
def step():
    with torch.autocast("cpu", dtype=plan.autocast_dtype or torch.bfloat16, enabled=plan.autocast_dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
step()
times = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": min(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "plan": "; ".join(plan.notes) or "fp32"}))
"""


def write_cohorts(out: Path, args: argparse.Namespace) -> dict[str, Path]:
    from ctcovid.data.cohorts import import_cohort
    from ctcovid.data.manifest import write_manifest
    from ctcovid.synth.cohort import SynthConfig, generate_cohort

    manifests = {}
    for task, fmt, kind in (("diagnosis", "png", "cc-ccii"), ("severity", "dicom", "cncb-severity")):
        root = out / kind
        t0 = time.perf_counter()
        cfg = SynthConfig(n=args.scans, task=task, format=fmt, seed=7, slices=tuple(args.slices),
                          in_plane=(args.size, args.size), scans_per_patient=(1, 1))  # fmt: skip
        generate_cohort(root, cfg)
        result = import_cohort(kind, str(root))
        manifests[kind] = write_manifest(result.rows, root / "manifest.csv")
        print(f"   {kind}: {args.scans} scans written and imported in {time.perf_counter() - t0:.0f} s")
    return manifests


def preprocess(manifest: Path, config: str) -> dict[str, float]:
    """Per scan: cold cache build (read + pipeline + write) and the plain decoder, same files."""
    from ctcovid.config import load_toml
    from ctcovid.data.cache import PreprocessCache, build_entry
    from ctcovid.data.manifest import read_manifest
    from ctcovid.train.config import run_config_from_dict

    cfg = run_config_from_dict(load_toml(REPO / "configs" / config), REPO / "configs").preprocess
    rows = read_manifest(manifest)
    build_s = decode_s = 0.0
    slices = nbytes = 0
    for row in rows:
        cache = PreprocessCache(Path(tempfile.mkdtemp(dir=manifest.parent)), cfg, manifest.parent)
        t0 = time.perf_counter()
        build_entry(cache, row)
        build_s += time.perf_counter() - t0
        nbytes += cache.paths(row)[0].stat().st_size
        slices += row.n_slices
        decode_s += best_of(
            lambda row=row: plain_decode(row.resolve(manifest.parent)), 1
        )  # page cache warm, as for the build
        shutil.rmtree(cache.dir.parent)
    return {"build_s": build_s / len(rows), "decode_s": decode_s / len(rows), "slices": slices / len(rows),
            "bytes": nbytes / len(rows)}  # fmt: skip


def plain_decode(folder: Path) -> None:
    pngs = sorted(folder.glob("*.png"))
    if pngs:
        from PIL import Image

        np.stack([np.asarray(Image.open(f)) for f in pngs])
        return
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.GetArrayFromImage(reader.Execute())


def train_steps(name: str, shape: str, steps: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", STEP_SCRIPT, name, shape, str(steps)],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=2, help="synthetic scans per layout (default 2)")
    ap.add_argument("--slices", type=int, nargs=2, default=(250, 400), metavar=("LOW", "HIGH"))
    ap.add_argument("--size", type=int, default=512, help="in-plane pixels of the synthetic scans")
    ap.add_argument("--steps", type=int, default=1, help="timed training steps per recipe (after a warm-up)")
    ap.add_argument("--diag-batch", type=int, default=32, help="diagnosis recipe batch (paper: 32)")
    ap.add_argument("--sev-batch", type=int, default=6, help="severity recipe batch (ours: 6)")
    ap.add_argument("--gpu-diag-step", type=float, default=0.077,
                    help="s per r3d_18 step at 32x3x4x512x512 on a GPU (H200, bench/RESULTS.md)")  # fmt: skip
    ap.add_argument(
        "--gpu-sev-step", type=float, default=0.0, help="s per CT-S152 step at 6x1x40x256x256 on a GPU"
    )
    ap.add_argument("--no-train", action="store_true", help="skip the training steps (and the projection)")
    ap.add_argument("--out", help="working folder (default: a temporary one, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="ctcovid_scale_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"platform {platform.platform()} | python {platform.python_version()} | commit {commit()}")
    print(
        f"cpu: {cpu_name()}; {os.cpu_count()} cores; peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print(
        f"\n## cohorts: {args.scans} scans per layout, {args.slices[0]}-{args.slices[1]} slices of {args.size}x{args.size}"
    )
    manifests = write_cohorts(out, args)
    try:
        print("\n## preprocessing into the cache, one process, per scan (cold)")
        pre = {
            "diagnosis": preprocess(manifests["cc-ccii"], "diagnosis_cc-ccii.toml"),
            "severity": preprocess(manifests["cncb-severity"], "severity_cncb_ct-s152.toml"),
        }
        for k, p in pre.items():
            base = "Pillow" if k == "diagnosis" else "SimpleITK"
            print(f"   {k:<9} {p['build_s']:.2f} s a scan of {p['slices']:.0f} slices (read + preprocess + write), "
                  f"{base} decode alone {p['decode_s']:.2f} s: {p['build_s'] / p['decode_s']:.2f}x; "
                  f"cache {p['bytes'] / 1e6:.1f} MB a scan, {p['bytes'] / p['slices'] / 1e3:.0f} KB a source slice "
                  f"({p['bytes'] / (p['slices'] * args.size**2):.3f} x its 8-bit voxels)")  # fmt: skip
        if args.no_train:
            return
        print(
            f"\n## training steps (tuned plan as fit runs it, best of {args.steps} after a warm-up; subprocess each)"
        )
        runs = {
            "diagnosis": ("r3d_18", f"{args.diag_batch}x3x4x512x512"),
            "severity": ("ct_s152", f"{args.sev_batch}x1x40x256x256"),
        }
        steps = {}
        for k, (name, shape) in runs.items():
            steps[k] = train_steps(name, shape, args.steps)
            b = int(shape.split("x")[0])
            print(f"   {k:<9} {name} {shape}: {steps[k]['step_s']:.1f} s a step, {b / steps[k]['step_s']:.2f} samples/s, "
                  f"peak RSS {steps[k]['peak_rss_mb'] / 1e3:.1f} GB ({steps[k]['plan']})")  # fmt: skip
        d, s = pre["diagnosis"], pre["severity"]
        diag_samples = DIAG_SLICES / 4
        diag_bytes = d["bytes"] / d["slices"] * DIAG_SLICES
        diag_pre = d["build_s"] / d["slices"] * DIAG_SLICES
        diag_epoch = diag_samples / (args.diag_batch / steps["diagnosis"]["step_s"])
        sev_bytes, sev_pre = s["bytes"] * SEV_PATIENTS, s["build_s"] * SEV_PATIENTS
        sev_epoch = SEV_PATIENTS / (args.sev_batch / steps["severity"]["step_s"])
        cores = os.cpu_count() or 1
        gpu_d = hours(diag_samples / 32 * args.gpu_diag_step) if args.gpu_diag_step else "not measured"
        gpu_s = hours(SEV_PATIENTS / 6 * args.gpu_sev_step) if args.gpu_sev_step else "not measured"
        print("\n## what reproducing each paper costs (projected from the rates above)\n")
        print(
            "| paper | cohort | cache on disk | preprocessing (1 process / all cores) | epoch on this CPU | epoch on one GPU |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| diagnosis (r3d_18, depth 4, 3 x 512 x 512) | CC-CCII subset: {DIAG_SLICES:,} slices, {DIAG_PATIENTS} patients, "
              f"{diag_samples:,.0f} chunks | {diag_bytes / 1e9:.1f} GB | {hours(diag_pre)} / {hours(diag_pre / cores)} | "
              f"{hours(diag_epoch)} | {gpu_d} |")  # fmt: skip
        print(f"| severity (CT-S152, 40 x 256 x 256) | CNCB: {SEV_PATIENTS} patients, one volume each | "
              f"{sev_bytes / 1e9:.2f} GB | {hours(sev_pre)} / {hours(sev_pre / cores)} | {hours(sev_epoch)} | {gpu_s} |")  # fmt: skip
        print(f"\nPreprocessing per slice assumes the measured scans' read/preprocess rate; 'all cores' divides by {cores}."
              " The severity cohort's size per volume follows the synthetic scans' slice count.")  # fmt: skip
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
