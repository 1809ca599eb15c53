"""Does Grad-CAM point at the lesions? Train a small 3D ResNet on synthetic scans whose label is
decided by lesions alone (COVID-19 pattern vs normal), then measure where the heat falls.

For each held-out COVID-19 scan the heatmap (on the input grid, as ``ctcovid explain`` writes it)
is compared with the true lesion mask dilated by ``--dilate-mm`` (the CAM is coarse: layer4 of a
3D ResNet sees 1/16 of the depth and 1/32 of the width). Reported per reference region R (body,
lungs):

* ``heat_in``  = sum(heat * lesion * R) / sum(heat * R): the share of the heat on the lesions;
* ``area``     = |lesion * R| / |R|: the share a uniform (uninformative) map would put there;
* ``enrichment`` = heat_in / area (1.0 = no better than uniform);
* ``pointing``: the share of scans whose hottest body voxel lies on the dilated lesions.

Figures are means over the held-out COVID-19 scans (so enrichment is the mean of per-scan ratios,
not the ratio of the mean columns).

An untrained network of the same architecture is measured as a control. Run:
``python bench/bench_explain.py`` (a few minutes on 2 CPU cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ctcovid.checkpoint import make_checkpoint
from ctcovid.data.phantom import LUNG_TISSUES, Tissue
from ctcovid.data.synthetic import SynthCase, synth_case
from ctcovid.models import create_model
from ctcovid.predict import Predictor, explain
from ctcovid.preprocess import PreprocessConfig, build_pipeline

LABELS = ["NCP", "Normal"]  # the positive class is replaced by --positive


def make_cases(n: int, seed: int, shape: tuple[int, int, int], positive: str = "NCP") -> list[SynthCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        if i % 2 == 1:
            cases.append(synth_case("Normal", rng=rng, shape=shape))
        elif positive == "NCP":
            cases.append(synth_case("NCP", rng=rng, shape=shape, severity_score=int(rng.integers(3, 6))))
        else:
            cases.append(synth_case(positive, rng=rng, shape=shape))
    return cases


def recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running BN statistics as the plain mean over the training set ("precise BN").

    After a few dozen Adam steps the exponential running averages lag the weights so far behind
    that the eval-mode network predicts one class for everything; recomputing them fixes that.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 8):
            model(x[i : i + 8])
    model.eval()


def train(
    cases: list[SynthCase], pre: PreprocessConfig, epochs: int, seed: int, lr: float
) -> torch.nn.Module:
    pipeline = build_pipeline(pre)
    x = torch.from_numpy(np.stack([pipeline(c.volume) for c in cases]))
    y = torch.tensor([LABELS.index(c.label) for c in cases])
    torch.manual_seed(seed)
    model = create_model("r3d_10", num_classes=len(LABELS))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for i in range(0, len(x), 8):
            idx = order[i : i + 8]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print(f"  epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f}", flush=True)
    recalibrate_batchnorm(model, x)
    return model


def measure(
    predictor: Predictor,
    cases: list[SynthCase],
    layer: str,
    dilate_mm: float,
    method: str = "gradcam",
    save: str = "",
) -> dict[str, float]:
    rows = []
    correct = 0
    for c in cases:
        e = explain(predictor, c.volume, method=method, layer=layer, target=LABELS[0])
        if save and not rows and c.label == LABELS[0]:  # the first positive case, heat and truth side by side
            from ctcovid.predict.explain import montage_png

            ks = e.top_slices(6)
            Path(save).mkdir(parents=True, exist_ok=True)
            stem = f"{Path(save)}/{LABELS[0]}_{layer}_{method}"
            Path(f"{stem}_heat.png").write_bytes(e.montage_png(6))
            truth = c.lesion_mask.astype(np.float32)
            png = montage_png(c.volume, truth, title="true lesions", slices=ks)
            Path(f"{stem}_lesions.png").write_bytes(png)
        correct += e.prediction.label == c.label
        if c.label != LABELS[0]:
            continue
        spacing = c.volume.spacing_mm
        lesion = ndimage.distance_transform_edt(~c.lesion_mask, sampling=spacing) <= dilate_mm
        body = (c.tissue != Tissue.AIR) & (c.tissue != Tissue.TABLE)
        lungs = np.isin(c.tissue, [int(t) for t in LUNG_TISSUES])
        # Pointing game: is the hottest voxel inside the body on (or within dilate_mm of) a lesion?
        hottest = np.unravel_index(np.argmax(e.heat * body), e.heat.shape)
        row = {"pointing": float(lesion[hottest])}
        for name, region in (("body", body), ("lungs", lungs)):
            heat = e.heat * region
            heat_in = float((heat * lesion).sum() / max(heat.sum(), 1e-12))
            area = float((lesion & region).sum() / region.sum())
            row[f"{name}_heat_in"], row[f"{name}_area"] = heat_in, area
            row[f"{name}_enrichment"] = heat_in / area
        rows.append(row)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["accuracy"] = correct / len(cases)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=40, help="training scans (half COVID-19, half normal)")
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="in-plane input size")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--dilate-mm", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--positive", choices=["NCP", "CP"], default="NCP", help="lesion class against Normal")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam")
    ap.add_argument("--save", default="", help="folder for montages of the first positive test scan")
    args = ap.parse_args()
    if args.quick:
        args.train, args.test, args.epochs = 8, 4, 1
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    shape = (24, args.size * 5 // 4, args.size * 5 // 4)
    LABELS[0] = args.positive
    t0 = time.perf_counter()
    train_cases = make_cases(args.train, args.seed, shape, args.positive)
    test_cases = make_cases(args.test, args.seed + 1000, shape, args.positive)
    pre = PreprocessConfig(depth=args.depth, size_hw=(args.size, args.size))
    print(
        f"{len(train_cases)} training / {len(test_cases)} test scans of {shape} in {time.perf_counter() - t0:.1f} s"
    )
    t0 = time.perf_counter()
    model = train(train_cases, pre, args.epochs, args.seed, args.lr)
    print(
        f"{args.positive} vs Normal: trained r3d_10 ({args.epochs} epochs, input {args.depth}x{args.size}x{args.size}) in {time.perf_counter() - t0:.0f} s"
    )
    torch.manual_seed(args.seed + 1)
    untrained = create_model("r3d_10", num_classes=len(LABELS)).eval()
    print(f"dilated lesion mask: +{args.dilate_mm} mm; heat measured on the input grid")
    print(
        f"{'model':<10}{'layer':<8}{'acc':>6}{'body heat_in':>14}{'body area':>11}{'enrich':>8}{'lung heat_in':>14}{'lung area':>11}{'enrich':>8}{'pointing':>9}"
    )
    for name, net in (("trained", model), ("untrained", untrained)):
        ckpt = make_checkpoint(
            net,
            name="r3d_10",
            kwargs={"num_classes": 2},
            labels=LABELS,
            task="diagnosis",
            preprocess=pre.to_dict(),
        )
        predictor = Predictor.from_checkpoint(ckpt)
        for layer in ("layer4", "layer3"):
            save = args.save if name == "trained" else ""
            m = measure(predictor, test_cases, layer, args.dilate_mm, args.method, save)
            print(
                f"{name:<10}{layer:<8}{m['accuracy']:>6.2f}{m['body_heat_in']:>14.3f}{m['body_area']:>11.3f}"
                f"{m['body_enrichment']:>8.2f}{m['lungs_heat_in']:>14.3f}{m['lungs_area']:>11.3f}{m['lungs_enrichment']:>8.2f}"
                f"{m['pointing']:>9.2f}"
            )


if __name__ == "__main__":
    main()
