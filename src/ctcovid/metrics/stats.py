"""Uncertainty and paired tests: patient bootstrap confidence intervals, paired bootstrap, DeLong.

Scans of one patient are not independent, so every resampling here draws *patients* with
replacement and keeps all their scans. Resamples are vectorized: a draw is a ``(B, S)`` matrix of
scan multiplicities, the confusion matrices of all draws come from one matrix product and AUROCs
from one sort (:func:`ctcovid.metrics.metrics.weighted_auc`), so 1000 resamples of a few hundred
scans take milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ctcovid.metrics.metrics import confusion_scores, decide, nan_div, weighted_auc

N_RESAMPLES = 1000
CI_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auroc",
    "binary_accuracy",
    "binary_precision",
    "binary_recall",
    "binary_f1",
    "kappa_quadratic",
    "mae",
)
ORDINAL_METRICS = ("kappa_quadratic", "mae")


def patient_weights(groups: Sequence[str], n_resamples: int, seed: int) -> np.ndarray:
    """``(B, S)`` multiplicity of each sample in ``B`` resamples of its groups (patients)."""
    _, group_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, max(n_groups, 1), size=(n_resamples, n_groups))
    offsets = np.arange(n_resamples)[:, None] * n_groups
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_groups)
    counts = counts.reshape(n_resamples, n_groups)
    return counts[:, group_of].astype(np.float64)


def resampled_scores(
    probs: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    *,
    positive: int | None = None,
    ordinal: bool = False,
    decision: str = "argmax",
) -> dict[str, np.ndarray]:
    """Each metric of :data:`CI_METRICS` under every row of ``weights`` (``(B,)`` arrays, NaN = undefined).

    ``decision``: how predictions are made from ``probs`` (:func:`~ctcovid.metrics.metrics.decide`).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    k = probs.shape[1]
    preds = decide(probs, decision)
    cell = np.zeros((len(targets), k * k))
    cell[np.arange(len(targets)), targets * k + preds] = 1.0
    cms = (weights @ cell).reshape(-1, k, k)  # (B, K, K) weighted confusion matrices
    s = confusion_scores(cms, positive)
    out = {m: s[m] for m in CI_METRICS if m in s}
    if not ordinal:
        for name in ORDINAL_METRICS:
            out.pop(name, None)
    aucs = np.stack([weighted_auc(probs[:, c], targets == c, weights) for c in range(k)], 1)  # (B, K)
    n_defined = (~np.isnan(aucs)).sum(1)
    out["auroc"] = np.where(n_defined >= 2, nan_div(np.nansum(aucs, 1), n_defined), np.nan)
    if positive is not None:
        out["binary_auroc"] = aucs[:, positive]
    return out


def bootstrap_ci(
    probs: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    *,
    positive: int | None = None,
    ordinal: bool = False,
    decision: str = "argmax",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Percentile confidence intervals of the metrics, resampling ``groups`` (patient ids).

    ``decision`` makes the predictions as in
    :func:`~ctcovid.metrics.metrics.classification_metrics` (``"median"`` for an ordinal head).

    Returns ``{metric: {"low", "high", "n_defined"}}``; a resample where a metric is undefined
    (e.g. no positives drawn) is left out of that metric's interval and ``n_defined`` counts the
    rest. ``low``/``high`` are ``None`` when no resample defines the metric.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if len(targets) == 0:
        return {}
    w = patient_weights(groups, n_resamples, seed)
    alpha = (1 - confidence) / 2
    out: dict[str, dict[str, Any]] = {}
    scores = resampled_scores(probs, targets, w, positive=positive, ordinal=ordinal, decision=decision)
    for name, values in scores.items():
        ok = values[~np.isnan(values)]
        low, high = (
            (float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha))) if len(ok) else (None, None)
        )
        out[name] = {"low": low, "high": high, "n_defined": len(ok)}
    return out


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    groups: Sequence[str],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Difference of accuracy ``a - b`` on the same samples, with a patient-bootstrap CI and p-value.

    The p-value is two-sided, ``2 * min(P(d <= 0), P(d >= 0))`` over resampled differences
    (capped at 1).
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"paired samples must be two equal, non-empty 1D arrays, got {a.shape} and {b.shape}"
        )
    w = patient_weights(groups, n_resamples, seed)
    d = nan_div(w @ (a - b), w.sum(1))
    alpha = (1 - confidence) / 2
    p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    return {
        "diff": float((a - b).mean()),
        "low": float(np.quantile(d, alpha)),
        "high": float(np.quantile(d, 1 - alpha)),
        "p_value": p,
        "n_resamples": n_resamples,
    }


# ---------------------------------------------------------------------------------------- DeLong
def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (vectorized over rows)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def delong_covariance(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of ``M`` scorers on the same samples and their DeLong covariance matrix.

    The fast algorithm of Sun & Xu (2014): structural components from midranks, ``O(M N log N)``.

    Args:
        scores: ``(M, N)`` scores (or ``(N,)`` for one scorer), higher = more positive.
        positive: ``(N,)`` booleans; needs at least one positive and one negative.

    Returns:
        ``aucs (M,)`` and ``cov (M, M)``.
    """
    x = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos = np.asarray(positive, dtype=bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        # The covariance estimates divide by m - 1 and n - 1.
        raise ValueError(f"DeLong needs two positive and two negative samples, got {m} and {n}")
    xp, xn = x[:, pos], x[:, ~pos]
    tx, ty, tz = _midranks(xp), _midranks(xn), _midranks(np.concatenate([xp, xn], 1))
    aucs = (tz[:, :m].sum(1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives scored below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives scored above it
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, cov


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """Paired DeLong test of ``AUROC(a) - AUROC(b)`` on the same samples (two-sided normal p-value).

    With fewer than two positives or negatives every value is ``None`` and ``reason`` says why.
    """
    pos = np.asarray(positive, dtype=bool)
    if pos.sum() < 2 or (~pos).sum() < 2:
        reason = f"needs two positive and two negative samples, got {int(pos.sum())} and {int((~pos).sum())}"
        return dict.fromkeys(("auroc_a", "auroc_b", "diff", "se", "z", "p_value")) | {"reason": reason}
    aucs, cov = delong_covariance(np.stack([scores_a, scores_b]), positive)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:  # identical rankings: no difference to test
        z, p = None, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / math.sqrt(var)
        p = math.erfc(abs(z) / math.sqrt(2))
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "diff": diff,
        "se": math.sqrt(max(var, 0.0)),
        "z": z,
        "p_value": p,
    }
