"""After training: fit what tells predict how far to trust an answer, and store it in the checkpoint.

:func:`fit_reliability` runs the finished model once over the validation split and over (a random
subset of) the un-augmented training split and returns ``ckpt["reliability"]``:

* ``temperature``: temperature scaling fitted on the validation scans (scan-level NLL; see
  :mod:`ctcovid.metrics.reliability`; left at 1 with fewer than 10 validation scans), with the
  validation NLL and ECE before and after;
* ``feature_density``: class means and shared precision of the training features (Mahalanobis
  out-of-distribution score), and for each OOD method (``mahalanobis``, ``energy``) the validation
  scans' median and the ``ood_quantile`` threshold: predict reports
  ``ood_score = (score - median) / (threshold - median)``, so 0 is a typical validation scan and
  above 1 is out of distribution, whatever the method's units;
* ``refer_uncertainty``: the normalised entropy above which an answer is referred: fitted on the
  validation scans as the largest threshold at which the scans kept have an error rate of at most
  ``target_risk`` (:func:`uncertainty_threshold`), unless the config fixes it;
* ``quality_reference``: the training cohort's scan statistics (spacing, slice counts, lung field),
  from the preprocessing cache, for the quality checks (:mod:`ctcovid.predict.quality`).

``ctcovid calibrate RUN`` does the same for a checkpoint trained before this existed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ctcovid.data.dataset import CachedDataset
from ctcovid.errors import ConfigError
from ctcovid.metrics import reliability as R
from ctcovid.metrics.metrics import aggregate_by, decide, decision_for_head, expected_calibration_error
from ctcovid.train.config import ReliabilityConfig, RunConfig
from ctcovid.train.loop import Inference, StepOptions, infer

log = logging.getLogger(__name__)
RELIABILITY_FORMAT = 1
DEFAULT_REFER = 0.6  # without validation scans to fit it on
# One scalar from fewer scans than this follows their luck (3 scans all right: T -> its lower bound).
MIN_TEMPERATURE_SCANS = 10


def scan_scores(values: np.ndarray, scan_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Mean of per-input scores per scan, in first-seen order."""
    order: dict[str, list[int]] = {}
    for i, s in enumerate(scan_ids):
        order.setdefault(s, []).append(i)
    return np.array([float(np.mean(values[idx])) for idx in order.values()]), list(order)


def ood_scores(inf: Inference, density: R.FeatureDensity | None) -> dict[str, np.ndarray]:
    """Per-input raw scores of every OOD method available."""
    out = {"energy": R.energy_score(inf.logits.numpy())}
    if density is not None:
        out["mahalanobis"] = density.score(inf.features.numpy())
    return out


def fit_reliability(
    model: nn.Module,
    train_ds: CachedDataset,
    val_ds: CachedDataset,
    opts: StepOptions,
    cfg: ReliabilityConfig,
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit temperature, feature density and OOD thresholds; return ``ckpt["reliability"]``."""
    num_classes = len(train_ds.label_names)
    model.eval()
    out: dict[str, Any] = {
        "format": RELIABILITY_FORMAT,
        "temperature": 1.0,
        "ood_method": cfg.ood_method,
        "ood_quantile": cfg.ood_quantile,
        "refer_uncertainty": cfg.refer_uncertainty if cfg.refer_uncertainty is not None else DEFAULT_REFER,
        "ood": {},
        "validation": {},
        "quality_reference": _quality_reference(train_ds),
    }
    # ---- training features -> class-conditional density
    n_train = len(train_ds)
    pick = np.random.default_rng(seed).permutation(n_train)[: cfg.train_samples]
    train_inf = infer(model, DataLoader(Subset(train_ds, sorted(pick.tolist())), batch_size=batch_size), opts)
    density = None
    if len(train_inf.targets) >= 2:
        density = R.FeatureDensity.fit(train_inf.features.numpy(), train_inf.targets.numpy(), num_classes)
        out["feature_density"] = {k: torch.from_numpy(v) for k, v in density.state().items()}
    out["train_samples"] = len(train_inf.targets)

    # ---- validation: temperature, calibration before/after, OOD thresholds
    val = infer(model, DataLoader(val_ds, batch_size=batch_size), opts)
    if len(val.targets) == 0:
        log.warning("no validation inputs: temperature stays 1 and no OOD threshold is set")
        return out
    ids = [m["scan_id"] for m in val.metas]
    probs = torch.softmax(val.logits, 1).numpy().astype(np.float64)
    targets = val.targets.numpy()
    n_scans = len(set(ids))
    if n_scans >= MIN_TEMPERATURE_SCANS:
        t = R.fit_temperature(probs, targets, ids)
    else:
        t = 1.0
        log.warning(
            "only %d validation scans: temperature left at 1 (fitting needs >= %d)",
            n_scans,
            MIN_TEMPERATURE_SCANS,
        )
    out["temperature"] = t
    before, after = (aggregate_by(p, targets, ids)[:2] for p in (probs, R.temper(probs, t)))
    out["validation"] = {
        "scans": len(before[1]),
        "nll_before": R.scan_nll(probs, targets, ids),
        "nll_after": R.scan_nll(R.temper(probs, t), targets, ids),
        "ece_before": expected_calibration_error(*before)[0],
        "ece_after": expected_calibration_error(*after)[0],
        "accuracy": float((before[0].argmax(1) == before[1]).mean()),
    }
    if cfg.refer_uncertainty is None:
        decision = decision_for_head(getattr(model, "head", None))
        after_p, after_t = after
        threshold, kept = uncertainty_threshold(
            R.normalized_entropy(after_p), decide(after_p, decision) == after_t, cfg.target_risk
        )
        out["refer_uncertainty"] = threshold
        out["validation"]["kept_at_threshold"] = kept
    for method, values in ood_scores(val, density).items():
        per_scan, _ = scan_scores(values, ids)
        out["ood"][method] = {
            "median": float(np.median(per_scan)),
            "threshold": R.threshold_at(per_scan, cfg.ood_quantile),
            "validation_scans": len(per_scan),
        }
    if cfg.ood_method not in out["ood"]:
        raise ConfigError(
            f"reliability.ood_method {cfg.ood_method!r} could not be fitted (no training features)"
        )
    log.info(
        "reliability: temperature %.3f (validation NLL %.3f -> %.3f, ECE %.3f -> %.3f), OOD by %s",
        t, out["validation"]["nll_before"], out["validation"]["nll_after"],
        out["validation"]["ece_before"] or 0.0, out["validation"]["ece_after"] or 0.0, cfg.ood_method,
    )  # fmt: skip
    return out


def uncertainty_threshold(
    uncertainty: np.ndarray, correct: np.ndarray, target_risk: float
) -> tuple[float, float]:
    """The largest uncertainty threshold whose kept scans (uncertainty <= it) err at most ``target_risk``.

    Returns ``(threshold, fraction of scans kept)``. When every scan can be kept the threshold is
    1 (no answer is referred for uncertainty); when not even the most certain scans meet the risk,
    it sits just below the smallest uncertainty (every answer is referred).
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if len(u) == 0:
        return DEFAULT_REFER, 0.0
    order = np.argsort(u, kind="stable")
    risk = np.cumsum(~ok[order]) / np.arange(1, len(u) + 1)
    # Ties: a threshold keeps every scan at or below it, so only cut between distinct values.
    cuts = [
        int(i)
        for i in np.flatnonzero(risk <= target_risk)
        if i == len(u) - 1 or u[order[i + 1]] > u[order[i]]
    ]
    if not cuts:
        return float(max(u[order[0]] - 1e-6, 0.0)), 0.0
    i = cuts[-1]
    if i == len(u) - 1:
        return 1.0, 1.0
    return float(u[order[i]]), (i + 1) / len(u)


def _quality_reference(ds: CachedDataset) -> dict[str, Any] | None:
    """The training scans' statistics (stored by the cache build) as quality-check ranges."""
    from ctcovid.predict.quality import reference_from_stats
    from ctcovid.preprocess.quality import ScanStats

    stats = [ScanStats.from_dict(m["scan_stats"]) for m in ds.metas if m.get("scan_stats")]
    if not stats:
        log.warning("the cache holds no scan statistics (built by an older ctcovid): no quality reference")
        return None
    return reference_from_stats(stats)


def add_reliability(
    cfg: RunConfig,
    best_path: Path,
    last_path: Path,
    bn_ds: CachedDataset,
    val_ds: CachedDataset,
    opts: StepOptions,
) -> None:
    """Fit calibration and OOD statistics for the best model and store them in its checkpoint(s).

    ``bn_ds`` is the un-augmented training set (features as predict will see them). The last
    checkpoint gets them too when it is the same epoch as the best.
    """
    from ctcovid.checkpoint import link_checkpoint, load_checkpoint, rebuild_model, save_checkpoint

    ck = load_checkpoint(best_path)
    model = rebuild_model(ck).to(opts.device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    ck["reliability"] = fit_reliability(
        model, bn_ds, val_ds, opts, cfg.reliability, batch_size=cfg.train.batch_size, seed=cfg.train.seed
    )
    save_checkpoint(ck, best_path)
    if ck.get("epoch") == cfg.train.epochs - 1:  # the best is the last epoch: one file again
        link_checkpoint(best_path, last_path)


def calibrate_checkpoint(
    checkpoint: str | Path,
    *,
    cfg: ReliabilityConfig | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Fit the reliability data for an existing checkpoint (e.g. trained before it existed).

    Uses the training run's manifest and ``split.csv`` (beside the checkpoint) and its cache;
    writes the checkpoint back (or to ``out``) and returns ``ckpt["reliability"]``.
    """
    from ctcovid.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
    from ctcovid.config import from_dict
    from ctcovid.data.cache import PreprocessCache
    from ctcovid.data.manifest import read_manifest
    from ctcovid.data.splits import read_split, split_path
    from ctcovid.preprocess.pipeline import PreprocessConfig

    ck = load_checkpoint(checkpoint)
    run_cfg = ck.get("config", {})
    data = run_cfg.get("data", {})
    manifest = data.get("manifest")
    if not manifest or not Path(manifest).is_file():
        raise ConfigError(
            f"{ck['path']}: its training manifest {manifest!r} is not there; calibration needs it"
        )
    if cfg is None:
        cfg = from_dict(ReliabilityConfig, run_cfg.get("reliability", {}), "reliability")
    labels = list(ck["labels"])
    rows = read_manifest(manifest, labels=labels)
    run_split = Path(ck["path"]).parent / "split.csv"
    split = read_split(run_split if run_split.is_file() else split_path(manifest))
    root = Path(manifest).parent
    cache = PreprocessCache(
        data.get("cache_dir") or root / ".ctcovid_cache", PreprocessConfig.from_dict(ck["preprocess"]), root
    )
    parts = {name: [r for r in rows if split.get(r.scan_id) == name] for name in ("train", "val")}
    if not parts["train"]:
        raise ConfigError(f"{ck['path']}: no training scans in the run's split; nothing to calibrate on")
    cache.build(parts["train"] + parts["val"])
    train_ds, val_ds = (CachedDataset(parts[n], cache, labels) for n in ("train", "val"))
    dev = torch.device(device)
    model = rebuild_model(ck).to(dev)
    ck["reliability"] = fit_reliability(
        model,
        train_ds,
        val_ds,
        StepOptions(dev),
        cfg,
        batch_size=batch_size,
        seed=int(run_cfg.get("train", {}).get("seed", 0)),
    )
    save_checkpoint(ck, out or ck["path"])
    return ck["reliability"]
