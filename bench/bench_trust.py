"""What the trust fields cost: quality checks, MC dropout and deep ensembles, side by side in one run.

    python bench/bench_trust.py [--model ct_s50] [--mc 10] [--members 3] [--repeats 3]

One synthetic chest CT (200 x 512 x 512 HU, ~1.5 x 0.7 x 0.7 mm) in memory; an untrained
checkpoint of ``--model`` (dropout on, so MC dropout applies) at the severity recipe's input
(uniformized to 40 slices of 128 x 128 here, to keep a CPU run short) with reliability data fitted
on random features. Times ``Predictor.predict`` (best of ``--repeats`` after a warm-up) for:
plain (quality checks off), + quality checks, + MC dropout (``--mc`` samples, drawn on the pooled
features: the models' only dropout sits before the head), and an ensemble of ``--members``
checkpoints; prints each and its ratio to plain. Untrained weights cost what trained
ones do.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

from _machine import commit, cpu_name
from _timing import best_of
from ctcovid.checkpoint import make_checkpoint, save_checkpoint
from ctcovid.metrics.reliability import FeatureDensity
from ctcovid.models import create_model
from ctcovid.predict import Predictor
from ctcovid.preprocess import PreprocessConfig
from ctcovid.synth.cohort import synth_case


def checkpoint(model_name: str, seed: int, out: Path) -> Path:
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=3, dropout=0.5)
    pre = PreprocessConfig(depth_mode="uniformize", depth=40, size_hw=(128, 128))
    rng = np.random.default_rng(seed)
    n_feat = model.num_features
    density = FeatureDensity.fit(rng.normal(size=(64, n_feat)), rng.integers(0, 3, 64), 3)
    ck = make_checkpoint(
        model,
        name=model_name,
        kwargs={"num_classes": 3, "dropout": 0.5},
        labels=["low", "medium", "high"],
        task="severity",
        preprocess=pre.to_dict(),
    )
    ck["reliability"] = {
        "temperature": 1.3,
        "ood_method": "mahalanobis",
        "ood": {"mahalanobis": {"median": float(n_feat), "threshold": 2.0 * n_feat}},
        "feature_density": {k: torch.from_numpy(v) for k, v in density.state().items()},
    }
    return save_checkpoint(ck, out / f"{model_name}_{seed}.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ct_s50")
    ap.add_argument("--mc", type=int, default=10)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"cpu: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; commit {commit()}"
    )
    volume = synth_case("NCP", rng=np.random.default_rng(0), shape=(200, 512, 512), severity_score=4).volume
    with TemporaryDirectory() as tmp:
        ckpts = [checkpoint(args.model, s, Path(tmp)) for s in range(args.members)]
        setups = {
            "plain (no quality checks)": Predictor.from_checkpoint(ckpts[0], quality_checks=False),
            "+ quality checks": Predictor.from_checkpoint(ckpts[0]),
            f"+ quality checks + MC dropout, {args.mc} samples": Predictor.from_checkpoint(
                ckpts[0], mc_samples=args.mc
            ),
            f"+ quality checks, ensemble of {args.members}": Predictor.from_checkpoints(ckpts),
        }
        times = {name: best_of(lambda p=p: p.predict(volume), args.repeats) for name, p in setups.items()}
    base = times["plain (no quality checks)"]
    print(f"{args.model}, one 200x512x512 scan -> 1x40x128x128, predict() best of {args.repeats}")
    print("| setup | seconds | x plain |")
    print("| --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
