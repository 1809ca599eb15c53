"""Out-of-distribution detection: which score tells the demo model's test scans from shifted ones.

    python bench/bench_ood.py --out /tmp/ood/ood.json [--run DIR] [--seed 0]

Trains the demo model (``ctcovid demo --out DIR --seed SEED``, DIR default ``<out folder>/demo_seed<SEED>``;
reused when DIR already holds a checkpoint). In-distribution: the demo cohort's held-out test scans.
Out of distribution: sets made from those same test scans by one shift each (below; content
matched), plus the real non-chest CTs of ``../shared/data`` and, outside the brief, its one real
chest CT. For each set and score (``mahalanobis``, ``energy``: the checkpoint's scaled OOD scores;
``max-softmax``: 1 - the largest calibrated probability; ``entropy``: normalised entropy) prints
the scan-level AUROC of OOD vs in-distribution with the model's own signal (quality checks off),
a bootstrap interval of the Mahalanobis - energy difference, the fraction above each fitted
threshold and the accuracy on the shifted scans. Then, with the full default rule (quality checks
on, the checkpoint's OOD method): the fraction referred and not assessable, and for the test scans
the accuracy of the answers kept. Writes the numbers, the machine and the command line to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from _machine import cpu_name
from ctcovid.checkpoint import load_checkpoint
from ctcovid.data.dataset import load_row_volume
from ctcovid.data.manifest import read_manifest
from ctcovid.data.splits import read_split
from ctcovid.io import load_volume
from ctcovid.metrics.reliability import normalized_entropy, ood_auroc
from ctcovid.predict import Predictor
from ctcovid.types import Volume

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCORES = ("mahalanobis", "energy", "max-softmax", "entropy")
METHODS = ("mahalanobis", "energy")
HEAD = (*SCORES, "maha - energy (95% CI)", "score > 1: maha / energy", "accuracy, checks off")
HEAD += ("referred", "not assessable")
AIR_HU, MAX_HU = -1024.0, 3071.0  # what a scanner stores: shifted scans are clipped to it
Shift = Callable[[Volume, np.random.Generator], Volume]
Scan = tuple[str, str | None, Volume]  # (scan_id, true label or None, volume)


# --------------------------------------------------------------------------- shifts
def _body_and_lungs(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body: the largest connected region above -500 HU, holes filled slice by slice; lungs:
    the voxels below -400 HU inside it (simple thresholding, enough for phantoms)."""
    labels, n = ndi.label(v > -500)
    if n == 0:
        return np.zeros_like(v, bool), np.zeros_like(v, bool)
    body = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    body = np.stack([ndi.binary_fill_holes(s) for s in body])
    return body, body & (v < -400)


def no_lungs(vol: Volume, rng: np.random.Generator) -> Volume:
    """The lung field filled with soft tissue (40 HU, 15 HU noise): a chest with no lungs."""
    v = vol.voxels.copy()
    _, lungs = _body_and_lungs(v)
    v[lungs] = 40.0 + rng.normal(0.0, 15.0, int(lungs.sum()))
    return vol.with_voxels(v.astype(np.float32))


def noise(vol: Volume, rng: np.random.Generator) -> Volume:
    """Gaussian noise of 150 HU (low dose, another scanner), clipped to the stored HU range."""
    v = vol.voxels + rng.normal(0.0, 150.0, vol.shape)
    return vol.with_voxels(np.clip(v, AIR_HU, MAX_HU).astype(np.float32))


def sharp_kernel(vol: Volume, rng: np.random.Generator) -> Volume:
    """Unsharp mask in plane, sigma 1 pixel, amount 2: edges and noise boosted like a bone kernel."""
    v = vol.voxels
    v = v + 2.0 * (v - ndi.gaussian_filter(v, (0, 1.0, 1.0)))
    return vol.with_voxels(np.clip(v, AIR_HU, MAX_HU).astype(np.float32))


def smooth_kernel(vol: Volume, rng: np.random.Generator, sigma_mm: float = 1.75) -> Volume:
    """Gaussian blur in plane, sigma 1.75 mm (a soft-tissue kernel on a clinical grid)."""
    sigma_px = (0.0, sigma_mm / vol.spacing_mm[1], sigma_mm / vol.spacing_mm[2])
    return vol.with_voxels(ndi.gaussian_filter(vol.voxels, sigma_px).astype(np.float32))


def smooth_kernel_1px(vol: Volume, rng: np.random.Generator) -> Volume:
    """Gaussian blur of one pixel in plane: the demo's pixels are 5-7 mm, so 1.75 mm is 0.3 px."""
    return smooth_kernel(vol, rng, sigma_mm=vol.spacing_mm[1])


def motion(vol: Volume, rng: np.random.Generator, max_mm: float = 10.0, streak_mm: float = 10.0) -> Volume:
    """Breathing motion: each slice moved by a random in-plane offset (up to +-10 mm per axis)
    and smeared along a random direction over 10 mm (the mean of 5 copies along the streak)."""
    sp = np.asarray(vol.spacing_mm[1:])
    out = np.empty_like(vol.voxels)
    for k, s in enumerate(vol.voxels):
        offset = rng.uniform(-max_mm, max_mm, 2)
        angle = rng.uniform(0.0, np.pi)
        streak = np.array([np.sin(angle), np.cos(angle)]) * streak_mm
        copies = [
            ndi.shift(s, (offset + t * streak) / sp, order=1, mode="constant", cval=float(s.min()))
            for t in np.linspace(-0.5, 0.5, 5)
        ]
        out[k] = np.mean(copies, axis=0)
    return vol.with_voxels(out)


def partial(vol: Volume, rng: np.random.Generator) -> Volume:
    """Only the middle third of the slices: a slab of the chest."""
    d = vol.shape[0]
    return vol.with_voxels(vol.voxels[d // 3 : d - d // 3].copy())


SHIFTS: dict[str, Shift] = {
    "noise": noise,
    "sharp-kernel": sharp_kernel,
    "smooth-kernel": smooth_kernel,
    "smooth-kernel-1px": smooth_kernel_1px,
    "motion": motion,
    "partial": partial,
}


# --------------------------------------------------------------------------- data
def demo_checkpoint(run: Path, seed: int) -> Path:
    found = sorted(run.rglob("checkpoint_best.pt"))
    if not found:
        cmd = [sys.executable, "-m", "ctcovid", "demo", "--out", str(run), "--seed", str(seed)]
        print("training the demo model:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        found = sorted(run.rglob("checkpoint_best.pt"))
    return found[0]


def test_scans(ckpt_path: Path) -> list[Scan]:
    """``(scan_id, label, volume)`` of the run's test split."""
    ck = load_checkpoint(ckpt_path)
    manifest = Path(ck["config"]["data"]["manifest"])
    split = read_split(ckpt_path.parent / "split.csv")
    rows = [r for r in read_manifest(manifest, labels=ck["labels"]) if split.get(r.scan_id) == "test"]
    return [(r.scan_id, r.label, load_row_volume(r, manifest.parent)) for r in rows]


def ood_sets(test: list[Scan], seed: int) -> dict[str, list[Scan]]:
    """Each shift applied to every test scan (label kept), plus the real scans (label None)."""
    rng = np.random.default_rng(seed)
    abdomen = ("abdomen-ct.nii.gz", "abdomen-ct-dicom-j2k")
    sets: dict[str, list[Scan]] = {"non-chest": [(p, None, load_volume(DATA / p)) for p in abdomen]}
    sets["non-chest"] += [(f"{sid}-no-lungs", None, no_lungs(v, rng)) for sid, _, v in test]
    for name, fn in SHIFTS.items():
        sets[name] = [(f"{sid}-{name}", lab, fn(v, rng)) for sid, lab, v in test]
    sets["real-chest"] = [("chest-ct-dicom-jpegls", None, load_volume(DATA / "chest-ct-dicom-jpegls"))]
    return sets


# --------------------------------------------------------------------------- scoring
def scan_row(by_method: dict[str, Predictor], default: Predictor, scan: Scan) -> dict[str, Any]:
    """One scan: the four scores (higher = more out of distribution) and the answer with the
    quality checks off, then what the full default rule says (refer, assessable, OOD flag)."""
    sid, label, vol = scan
    row: dict[str, Any] = {"id": sid, "label": label}
    for method, predictor in by_method.items():
        pred = predictor.predict(vol)
        row[method] = float(pred.ood_score)
    row["max-softmax"] = 1.0 - max(pred.probs.values())
    # From the probabilities: the ``uncertainty`` field is rounded to 4 decimals (ties near 0).
    row["entropy"] = float(normalized_entropy(np.array(list(pred.probs.values()))))
    row["predicted"] = pred.label
    full = default.predict(vol)
    row |= {"refer": full.refer, "assessable": full.assessable, "reasons": full.refer_reasons}
    row["ood_flag"] = full.ood_score is not None and full.ood_score > 1.0
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    right = [r["predicted"] == r["label"] for r in rows if r["label"] is not None]
    return {
        "n": len(rows),
        "referred": float(np.mean([r["refer"] for r in rows])),
        "not_assessable": float(np.mean([not r["assessable"] for r in rows])),
        "ood_flag": float(np.mean([r["ood_flag"] for r in rows])),
        "accuracy_checks_off": float(np.mean(right)) if right else None,
        # Flagged at the fitted threshold (95th percentile of the validation scans), checks off.
        "over_threshold": {m: float(np.mean([r[m] > 1.0 for r in rows])) for m in METHODS},
    }


def auroc_gap(ins: list[dict[str, Any]], outs: list[dict[str, Any]], seed: int) -> list[float]:
    """95 % bootstrap interval of AUROC(mahalanobis) - AUROC(energy), scans of both sets
    resampled independently (conservative: the pairing of a shifted scan with its source is ignored)."""
    rng = np.random.default_rng(seed)
    a, b = ({m: np.array([d[m] for d in rows]) for m in METHODS} for rows in (ins, outs))
    gaps = []
    for _ in range(2000):
        i, j = rng.integers(0, len(ins), len(ins)), rng.integers(0, len(outs), len(outs))
        auc = [ood_auroc(a[m][i], b[m][j]) or 0.0 for m in METHODS]
        gaps.append(auc[0] - auc[1])
    return [float(x) for x in np.percentile(gaps, [2.5, 97.5])]


def table_row(name: str, got: dict[str, Any]) -> str:
    gap, acc, over = got["maha_minus_energy_ci95"], got["accuracy_checks_off"], got["over_threshold"]
    cells = [f"{got['auroc'][s]:.2f}" for s in SCORES]
    cells += ["—" if gap is None else f"{gap[0]:+.2f} .. {gap[1]:+.2f}"]
    cells += [f"{over['mahalanobis']:.0%} / {over['energy']:.0%}", "—" if acc is None else f"{acc:.2f}"]
    cells += [f"{got['referred']:.0%}", f"{got['not_assessable']:.0%}"]
    return f"| {name} | {got['n']} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the numbers")
    ap.add_argument("--run", help="demo folder (trained there when it holds no checkpoint)")
    ap.add_argument("--seed", type=int, default=0, help="demo cohort / training seed, and the shifts' seed")
    args = ap.parse_args()
    out = Path(args.out)
    machine = {"cpu": cpu_name(), "platform": platform.platform(), "torch": torch.__version__}
    machine["numpy"] = np.__version__
    print(f"cpu: {machine['cpu']}; torch {machine['torch']}, numpy {machine['numpy']}")
    ckpt = demo_checkpoint(Path(args.run or out.parent / f"demo_seed{args.seed}"), args.seed)
    default = Predictor.from_checkpoint(ckpt)
    by_method = {m: Predictor.from_checkpoint(ckpt, ood_method=m, quality_checks=False) for m in METHODS}
    test = test_scans(ckpt)
    print(f"checkpoint {ckpt}: {len(test)} test scans, default OOD method {default.ood_method}", flush=True)

    ins = [scan_row(by_method, default, s) for s in test]
    kept = [r["predicted"] == r["label"] for r in ins if not r["refer"]]
    ind = {**summarise(ins), "accuracy_kept": float(np.mean(kept)) if kept else None, "n_kept": len(kept)}
    print("\n| set | n | " + " | ".join(HEAD) + " |\n" + "| --- " * (len(HEAD) + 2) + "|")
    sets: dict[str, Any] = {}
    for name, scans in ood_sets(test, args.seed).items():
        rows = [scan_row(by_method, default, s) for s in scans]
        auroc = {s: ood_auroc([r[s] for r in ins], [r[s] for r in rows]) for s in SCORES}
        gap = auroc_gap(ins, rows, args.seed) if len(rows) >= 5 else None
        sets[name] = {**summarise(rows), "auroc": auroc, "maha_minus_energy_ci95": gap, "scans": rows}
        print(table_row(name, sets[name]), flush=True)
    kept_acc = "n/a" if ind["accuracy_kept"] is None else f"{ind['accuracy_kept']:.3f}"
    over = ind["over_threshold"]
    print(
        f"\nin-distribution test scans ({ind['n']}): referred {ind['referred']:.0%} (not assessable "
        f"{ind['not_assessable']:.0%}, OOD flag {ind['ood_flag']:.0%}); score > 1 with checks off: "
        f"mahalanobis {over['mahalanobis']:.0%}, energy {over['energy']:.0%}; "
        f"accuracy {ind['accuracy_checks_off']:.3f} on all, {kept_acc} on the {ind['n_kept']} kept"
    )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "checkpoint": str(ckpt),
        "default_ood_method": default.ood_method,
        "in_distribution": {**ind, "scans": ins},
        "sets": sets,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
