"""Do the explanations point at the lesions? Train a small 3D ResNet with ``fit`` on synthetic scans
whose label is decided by the lesions alone, then measure where the heat falls on held-out scans.

The task is ``--task``: ``CP`` (common pneumonia vs normal), ``NCP`` (COVID-19 vs normal) or
``3class``. Training scans are written as NIfTI with a manifest and trained with
:func:`ctcovid.train.run.fit` (augmentation, class-uniform batches, precise BatchNorm statistics,
the checkpoint chosen on a validation split). Test scans are drawn with another seed and never
seen in training. For each held-out scan with lesions the heatmap of its true class, on the input
grid exactly as ``ctcovid explain`` writes it, is scored against the lesion mask the generator
knows:

* ``in``: sum(heat * lesion) / sum(heat), the share of all the heat that lies on the lesions
  (exact mask) - the issue's "fraction of heat inside the lesion mask";
* ``in+``: the same with the mask dilated by ``--dilate-mm`` (a map drawn at a few mm per voxel
  cannot hug a lesion's edge);
* ``area+``: |dilated lesion & body| / |body|, the share a uniform map over the body would get;
* ``enr``: in+ / area+ (1.0 = no better than uniform over the body);
* ``lung``: among the heat inside the lungs, the share on the dilated lesions, over their share
  of the lungs (does it find the lesion *within* the lungs, beyond finding the lungs);
* ``hot+``: the share of the hot voxels (heat >= half its maximum: what a reader sees) that lie
  on the dilated lesions;
* ``point``: the share of scans whose hottest voxel lies on the dilated lesions.

With ``--by-tissue`` it also prints where the rest of the heat goes, beyond the dilated lesions:
``far lung`` (lung parenchyma), ``far soft`` (heart, mediastinum, muscle: inside the lung field
where its mirror covers them), ``far other`` (fat, bone, airways).

Figures are means over the held-out lesion scans (per-scan ratios averaged). The same variants
run on an untrained network of the same architecture as a control (its figures show what the
geometry alone gives). Run: ``python bench/bench_explain.py --task CP`` (on 2 shared CPU cores
about 15 minutes of training and 25 of measuring, integrated gradients being 8 passes per scan;
``--quick`` for a smoke run). ``--work DIR`` keeps the cohort and the trained run, so a second run
with the same arguments measures again without training; ``--variants "a;b"`` measures only those.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ctcovid.checkpoint import make_checkpoint
from ctcovid.data.manifest import ManifestRow, write_manifest
from ctcovid.io import write_nifti
from ctcovid.models import create_model
from ctcovid.predict import Predictor, explain
from ctcovid.predict.cam import layer_cams, resolve_layers
from ctcovid.predict.explain import Explanation, _baseline, attribution_maps, finish_heat, stitch_chunks
from ctcovid.predict.heatmap import montage_png, restriction_mask
from ctcovid.synth.cohort import SynthCase, synth_case
from ctcovid.synth.phantom import LUNG_TISSUES, Tissue
from ctcovid.train.config import run_config_from_dict
from ctcovid.train.run import fit
from ctcovid.types import Volume

TASKS = {"CP": ("CP", "Normal"), "NCP": ("NCP", "Normal"), "3class": ("NCP", "CP", "Normal")}


@dataclass(frozen=True)
class Variant:
    name: str
    kwargs: dict[str, Any]


VARIANTS = [
    Variant("uniform over the lung field", {"uniform": "lungs"}),
    Variant("gradcam layer4", {"method": "gradcam", "layer": "layer4", "restrict": "none"}),
    Variant("gradcam layer3", {"method": "gradcam", "layer": "layer3", "restrict": "none"}),
    Variant("gradcam auto", {"method": "gradcam", "layer": "auto", "restrict": "none"}),
    Variant("gradcam layer2+layer3", {"method": "gradcam", "layer": "layer2+layer3", "restrict": "none"}),
    Variant("gradcam++ auto", {"method": "gradcam++", "layer": "auto", "restrict": "none"}),
    Variant("gradcam auto, body", {"method": "gradcam", "layer": "auto", "restrict": "body"}),
    Variant("gradcam layer3, lungs", {"method": "gradcam", "layer": "layer3", "restrict": "lungs"}),
    Variant("gradcam auto, lungs", {"method": "gradcam", "layer": "auto", "restrict": "lungs"}),
    Variant("gradxinput air, body", {"method": "gradxinput", "restrict": "body", "baseline": "air"}),
    Variant("ig zero, body", {"method": "ig", "restrict": "body", "baseline": "zero"}),
    Variant("ig air, body", {"method": "ig", "restrict": "body", "baseline": "air"}),
    Variant("ig healthy, body", {"method": "ig", "restrict": "body"}),
    Variant("gradxinput air, lungs", {"method": "gradxinput", "baseline": "air"}),
    Variant("ig zero, lungs", {"method": "ig", "baseline": "zero"}),
    Variant("ig air, lungs", {"method": "ig", "baseline": "air"}),
    Variant("gradxinput healthy, lungs", {"method": "gradxinput"}),
    Variant("ig healthy, lungs (default)", {}),
    # Guided Grad-CAM (Selvaraju et al. 2017) with an input-resolution map in place of guided
    # backpropagation; measured here only (see guided_gradcam): not better than IG on both tasks.
    Variant("guided-gradcam auto x gradxinput, lungs", {"guided": "gradxinput"}),
    Variant("guided-gradcam auto x ig, body", {"guided": "ig", "restrict": "body"}),
    Variant("guided-gradcam auto x ig, lungs", {"guided": "ig"}),
    Variant("guided-gradcam layer3 x ig, lungs", {"guided": "ig", "layer": "layer3"}),
]


def guided_gradcam(
    predictor: Predictor, volume: Volume, target: str, guided: str, layer: str | None = None,
    restrict: str = "lungs", smooth_mm: float = 3.0,
) -> Explanation:  # fmt: skip
    """Grad-CAM (upsampled to the network's input) times ``guided`` ("ig" or "gradxinput", air
    reference, positive part) per chunk, then as :func:`ctcovid.predict.explain` does for attributions: stitched,
    smoothed by ``smooth_mm``, mapped onto the input grid, restricted, normalised."""
    pre, chunks = predictor.prepare(volume, "scan")
    prediction = predictor.assemble(
        "scan", [], chunks, predictor.forward([c.array for c in chunks]), {}, None
    )
    t = predictor.labels.index(target)
    layers = resolve_layers(predictor, layer, chunks[0].array.shape)
    base = _baseline(predictor, volume.units, "air")

    def chunk_heat(x: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
        (cam,) = layer_cams(predictor.model, x, t, layers, "gradcam")
        up = F.interpolate(cam[:, None], size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        return up * attribution_maps(predictor.model, x, t, guided, baseline=base)

    heat_pre = stitch_chunks(predictor, chunks, pre.array.shape[1:], chunk_heat)
    inside = restriction_mask(volume, predictor.preprocess_config, restrict) if restrict != "none" else None
    heat, heat_pre = finish_heat(heat_pre, pre, volume, inside, smooth_mm)
    return Explanation(
        prediction, target, "guided-gradcam", "+".join(layers) + "*input", heat, heat_pre, volume
    )


def synth(label: str, rng: np.random.Generator, shape: tuple[int, int, int]) -> SynthCase:
    # COVID-19 severity 3-5 (12-50 % of the lungs): scores 1-2 are too faint to train on at this size.
    score = int(rng.integers(3, 6)) if label == "NCP" else None
    return synth_case(label, rng=rng, shape=shape, severity_score=score)


def write_cohort(
    root: Path, labels: tuple[str, ...], n_per_class: int, seed: int, shape: tuple[int, int, int]
) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_per_class):
        for label in labels:
            case = synth(label, rng, shape)
            scan_id = f"{label}_{i}"
            write_nifti(case.volume, root / f"{scan_id}.nii.gz")
            rows.append(
                ManifestRow(
                    scan_id, f"p_{scan_id}", f"{scan_id}.nii.gz", label, format="nifti", n_slices=shape[0]
                )
            )
    return write_manifest(rows, root / "manifest.csv")


def train(work: Path, labels: tuple[str, ...], args: argparse.Namespace, shape: tuple[int, int, int]) -> Path:
    run_dir = work / "run"
    best = run_dir / "checkpoint_best.pt"
    if best.is_file():
        print(f"reusing {best}")
        return best
    manifest = write_cohort(work / "cohort", labels, args.train, args.seed, shape)
    raw = {
        "data": {"manifest": str(manifest), "task": "custom", "labels": list(labels), "val": 0.2, "test": 0.0,
                 "workers": 1, "cache_dir": str(work / "cache")},
        "preprocess": {"depth_mode": "uniformize", "depth": args.depth, "size_hw": [args.size, args.size],
                       "body_crop": True},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "batch_size": 6, "lr": args.lr, "step_size": max(1, args.epochs * 3 // 4),
                  "sampler": "class_uniform", "best_metric": "val_loss", "seed": args.seed},
    }  # fmt: skip
    t0 = time.perf_counter()
    result = fit(run_config_from_dict(raw), run_dir)
    last = result.history[-1]
    print(
        f"trained {args.model} on {len(labels) * args.train} scans ({args.epochs} epochs, input "
        f"{args.depth}x{args.size}x{args.size}) in {time.perf_counter() - t0:.0f} s; best {result.best.get('epoch')}: "
        f"val loss {result.best.get('val_loss', float('nan')):.3f}, accuracy {result.best.get('val_accuracy', float('nan')):.2f}; last train loss {last.get('train_loss', float('nan')):.3f}"
    )
    return best


def score(heat: np.ndarray, case: SynthCase, dilate_mm: float) -> dict[str, float]:
    lesion = case.lesion_mask
    near = ndimage.distance_transform_edt(~lesion, sampling=case.volume.spacing_mm) <= dilate_mm
    body = (case.tissue != Tissue.AIR) & (case.tissue != Tissue.TABLE)
    lungs = np.isin(case.tissue, [int(t) for t in LUNG_TISSUES]) | lesion
    total = max(float(heat.sum()), 1e-12)
    area = float((near & body).sum() / body.sum())
    heat_lungs = max(float((heat * lungs).sum()), 1e-12)
    lung_area = float((near & lungs).sum() / lungs.sum())
    in_plus = float((heat * near).sum()) / total
    hot = heat >= 0.5 * float(heat.max())
    return {
        "in": float((heat * lesion).sum()) / total,
        "in+": in_plus,
        "area+": area,
        "enr": in_plus / area,
        "lung": float((heat * near * lungs).sum()) / heat_lungs / lung_area,
        "hot+": float(near[hot].mean()) if hot.any() else 0.0,
        "point": float(near[np.unravel_index(np.argmax(heat), heat.shape)]),
        "far lung": float((heat * (np.isin(case.tissue, [int(t) for t in LUNG_TISSUES]) & ~near)).sum())
        / total,
        "far soft": float((heat * ((case.tissue == Tissue.SOFT) & ~near)).sum()) / total,
        "far other": float(
            (heat * (np.isin(case.tissue, [Tissue.FAT, Tissue.BONE, Tissue.AIRWAY]) & ~near)).sum()
        )
        / total,
    }


def measure(
    predictor: Predictor, cases: list[SynthCase], variant: Variant, dilate_mm: float, save: str
) -> dict[str, float]:
    rows = []
    t0 = time.perf_counter()
    for c in cases:
        if "uniform" in variant.kwargs:  # a reference: what the restriction alone gives
            inside = restriction_mask(c.volume, predictor.preprocess_config, variant.kwargs["uniform"])
            rows.append(
                score(np.ones(c.volume.shape) if inside is None else inside.astype(np.float32), c, dilate_mm)
            )
            continue
        if "guided" in variant.kwargs:
            e = guided_gradcam(predictor, c.volume, c.label, **variant.kwargs)
        else:
            e = explain(predictor, c.volume, target=c.label, **variant.kwargs)
        rows.append(score(e.heat, c, dilate_mm))
        if save and len(rows) == 1:
            out = Path(save)
            out.mkdir(parents=True, exist_ok=True)
            stem = out / f"{c.label}_{variant.name.replace(' ', '_')}"
            ks = e.top_slices(6)
            stem.with_name(stem.name + "_heat.png").write_bytes(e.montage_png(6))
            truth = montage_png(c.volume, c.lesion_mask.astype(np.float32), title="true lesions", slices=ks)
            stem.with_name(stem.name + "_lesions.png").write_bytes(truth)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["s/scan"] = (time.perf_counter() - t0) / len(cases)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="CP")
    ap.add_argument("--train", type=int, default=24, help="training scans per class (20 %% go to validation)")
    ap.add_argument("--test", type=int, default=8, help="held-out scans per class")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=96, help="in-plane input size")
    ap.add_argument("--depth", type=int, default=24)
    ap.add_argument("--model", default="r3d_10")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dilate-mm", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="", help="variant names separated by ';' (default: all)")
    ap.add_argument("--work", default="", help="folder for the cohort and the run (default: a temporary one)")
    ap.add_argument("--save", default="", help="folder for montages of the first lesion test scan")
    ap.add_argument("--no-control", action="store_true", help="skip the untrained control")
    ap.add_argument("--by-tissue", action="store_true", help="add where the heat beyond the lesions goes")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args()
    if args.quick:
        args.train, args.test, args.epochs, args.size, args.depth = 4, 1, 1, 32, 8
    tmp = None
    if not args.work:
        tmp = tempfile.TemporaryDirectory()
        args.work = tmp.name
    work = Path(args.work)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, commit {commit or '?'}"
    )
    labels = TASKS[args.task]
    shape = (32, args.size * 5 // 4, args.size * 5 // 4)
    ckpt_path = train(work, labels, args, shape)
    trained = Predictor.from_checkpoint(ckpt_path)
    rng = np.random.default_rng(args.seed + 1000)
    test = [synth(lab, rng, shape) for _ in range(args.test) for lab in labels]
    acc = np.mean([trained.predict(c.volume).label == c.label for c in test])
    lesion_cases = [c for c in test if c.lesion_mask.any()]
    print(f"held-out accuracy {acc:.2f} on {len(test)} scans ({len(lesion_cases)} with lesions) of {shape}")

    torch.manual_seed(args.seed + 1)
    net = create_model(args.model, num_classes=len(labels)).eval()
    ckpt = make_checkpoint(net, name=args.model, kwargs={"num_classes": len(labels)}, labels=list(labels),
                           task="diagnosis", preprocess=trained.preprocess_config.to_dict())  # fmt: skip
    models = [("trained", trained)] + (
        [] if args.no_control else [("untrained", Predictor.from_checkpoint(ckpt))]
    )
    wanted = [v for v in VARIANTS if not args.variants or v.name in args.variants.split(";")]
    cols = ["in", "in+", "area+", "enr", "lung", "hot+", "point", "s/scan"]
    if args.by_tissue:
        cols[-1:-1] = ["far lung", "far soft", "far other"]
    print(f"lesion mask dilated +{args.dilate_mm:g} mm for in+/area+/enr/lung/point")
    header = f"| variant | {' | '.join(cols)} | untrained: in / enr / hot+ / point |"
    print(header)
    print("|" + " --- |" * (len(cols) + 2))
    for v in wanted:
        res = {
            name: measure(p, lesion_cases, v, args.dilate_mm, args.save if name == "trained" else "")
            for name, p in (models[:1] if "uniform" in v.kwargs else models)
        }
        t = res["trained"]
        row = f"| {v.name} | " + " | ".join(f"{t[c]:.2f}" for c in cols)
        if "untrained" in res:
            u = res["untrained"]
            row += f" | {u['in']:.2f} / {u['enr']:.2f} / {u['hot+']:.2f} / {u['point']:.2f} |"
        else:
            row += " | - |"
        print(row, flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
