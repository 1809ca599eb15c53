"""How far to trust a prediction (pure numpy/scipy): calibration, uncertainty, out-of-distribution scores.

* **Temperature scaling** (Guo et al., "On calibration of modern neural networks", ICML 2017): one
  scalar ``T`` divides the logits, fitted on the validation split by minimising the negative log
  likelihood; the argmax (and so accuracy) never changes. Because ``softmax(z / T)`` equals
  ``p ** (1 / T)`` renormalised, :func:`temper` works on probabilities and needs no logits, so it
  applies to stored chunk probabilities and to ordinal (log-probability) heads alike.
  :func:`fit_temperature` fits ``T`` at the level the answer is given: chunk probabilities are
  tempered, then averaged per scan, and the scan NLL is minimised.
* **Uncertainty**: :func:`normalized_entropy` of the predictive distribution, in ``[0, 1]`` (0: one
  class certain; 1: all classes equally likely). With several samples of the distribution (MC
  dropout, Gal & Ghahramani 2016; deep ensembles, Lakshminarayanan et al. 2017)
  :func:`mutual_information` is the part of it that comes from disagreement between samples.
* **Out-of-distribution scores**, higher = further from the training data:
  :class:`FeatureDensity` is the Mahalanobis distance of a network's pooled features to the nearest
  class mean under a shared (Ledoit-Wolf shrunk) covariance of the training features (Lee et al.,
  "A simple unified framework for detecting out-of-distribution samples", NeurIPS 2018);
  :func:`energy_score` is the negative free energy ``-logsumexp(z)`` of the logits (Liu et al.,
  "Energy-based out-of-distribution detection", NeurIPS 2020). :func:`threshold_at` picks the
  threshold as a quantile of the validation split's scores (in-distribution scans), so it is the
  share of in-distribution scans one accepts to refer.
* **Selective prediction**: :func:`risk_coverage` orders scans by confidence and gives the error
  rate of the most confident fraction, for every fraction (Geifman & El-Yaniv 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

# Below 0.25 the fit only sharpens a validation split it already gets entirely right (the NLL falls
# towards 0 as T -> 0): such a T says nothing about new scans.
TEMPERATURE_BOUNDS = (0.25, 10.0)
_EPS = 1e-12


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row-wise: probabilities as if the logits were divided by T."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or p.size == 0:
        return p
    z = np.log(np.clip(p, _EPS, None)) / float(temperature)
    return np.exp(z - logsumexp(z, axis=-1, keepdims=True))


def _group_mean(probs: np.ndarray, groups: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray | None]:
    if groups is None:
        return probs, None
    keys, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((len(keys), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return sums / np.bincount(inverse)[:, None], inverse


def scan_nll(probs: np.ndarray, targets: np.ndarray, groups: Sequence[str] | None = None) -> float:
    """Mean negative log likelihood of ``targets`` per group (scan), chunk probabilities averaged."""
    targets = np.asarray(targets, dtype=np.int64)
    mean, inverse = _group_mean(np.asarray(probs, dtype=np.float64), groups)
    if inverse is not None:
        first = np.zeros(len(mean), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]
        targets = targets[first]
    return float(-np.log(np.clip(mean[np.arange(len(mean)), targets], _EPS, None)).mean())


def fit_temperature(
    probs: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str] | None = None,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The temperature minimising the scan-level NLL of ``targets`` (``groups``: scan of each row).

    Returns 1.0 when there is nothing to fit (no rows, or every row certain and right).
    """
    p = np.asarray(probs, dtype=np.float64)
    if len(p) == 0:
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(
        lambda log_t: scan_nll(temper(p, float(np.exp(log_t))), targets, groups),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(np.exp(res.x))
    # Keep T = 1 unless the fit really improves the likelihood (flat objective: nothing to learn).
    if scan_nll(temper(p, t), targets, groups) >= scan_nll(p, targets, groups) - 1e-9:
        return 1.0
    return t


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row divided by ``log K``: 0 = certain, 1 = uniform over the K classes."""
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[-1]
    if k < 2:
        return np.zeros(p.shape[:-1])
    h = -(p * np.log(np.clip(p, _EPS, None))).sum(-1)
    return np.clip(h / np.log(k), 0.0, 1.0)


def mutual_information(samples: np.ndarray) -> np.ndarray:
    """Disagreement between S samples ``(N, S, K)`` of a distribution, normalised by ``log K``.

    Entropy of the mean minus the mean entropy (the "epistemic" part of the uncertainty, BALD).
    """
    s = np.asarray(samples, dtype=np.float64)
    mean = s.mean(1)
    return np.clip(normalized_entropy(mean) - normalized_entropy(s).mean(1), 0.0, 1.0)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)`` per row: higher = less like the training data (Liu et al. 2020)."""
    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=-1)


@dataclass
class FeatureDensity:
    """Class-conditional Gaussians with a shared covariance over pooled network features.

    ``score(f)`` = the smallest squared Mahalanobis distance of ``f`` to a class mean. The covariance
    is Ledoit-Wolf shrunk, so it stays invertible with fewer training samples than features (a
    512-feature network on a 100-scan cohort).
    """

    means: np.ndarray  # (K, F); a class absent from training has a row of NaN and is skipped
    precision: np.ndarray  # (F, F)

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, num_classes: int) -> FeatureDensity:
        from sklearn.covariance import LedoitWolf

        f = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.int64)
        if len(f) < 2:
            raise ValueError(f"FeatureDensity needs at least 2 training samples, got {len(f)}")
        means = np.full((num_classes, f.shape[1]), np.nan)
        centred = np.empty_like(f)
        for k in range(num_classes):
            rows = y == k
            if rows.any():
                means[k] = f[rows].mean(0)
                centred[rows] = f[rows] - means[k]
        lw = LedoitWolf(assume_centered=True).fit(centred)
        return cls(means, np.asarray(lw.precision_, dtype=np.float64))

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        best = np.full(len(f), np.inf)
        for mu in self.means:
            if np.isnan(mu).any():
                continue
            d = f - mu
            best = np.minimum(best, np.einsum("nf,fg,ng->n", d, self.precision, d))
        return best

    def state(self) -> dict[str, Any]:
        """Plain arrays (float32) for a checkpoint."""
        return {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureDensity:
        return cls(np.asarray(state["means"], np.float64), np.asarray(state["precision"], np.float64))


def threshold_at(scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of in-distribution ``scores``: above it, a scan counts as out of distribution."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("no finite scores to choose a threshold from")
    return float(np.quantile(s, quantile))


def ood_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float | None:
    """AUROC of separating out- from in-distribution by score (1: perfect, 0.5: chance)."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    # Mann-Whitney U with ties counted half.
    greater = (b[:, None] > a[None, :]).sum()
    ties = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Error rate among the ``c`` most confident scans for every ``c``, and the area under it.

    Returns ``coverage`` and ``risk`` (lists, coverage ascending) and ``aurc`` (mean risk over
    coverages; lower is better; the error rate itself when confidence carries no information).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = len(conf)
    if n == 0:
        return {"coverage": [], "risk": [], "aurc": None}
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~ok[order])
    kept = np.arange(1, n + 1)
    risk = errors / kept
    return {"coverage": (kept / n).tolist(), "risk": risk.tolist(), "aurc": float(risk.mean())}
