"""Classification metrics on probabilities, at chunk, scan or patient level (pure numpy).

:func:`classification_metrics` returns one JSON-ready dict: accuracy; per-class precision, recall,
F1, support and one-vs-rest AUROC; macro and weighted averages; a confusion matrix as counts and
row-normalized (rows = truth, the severity paper's Table 2 layout); the diagnosis paper's
"COVID vs rest" binary accuracy / precision / recall / F1 for a ``positive`` class; quadratic
weighted kappa and mean absolute error in grades for ordinal labels (:func:`ordinal_metrics`);
expected calibration error.

The predicted class comes from :func:`decide`: the argmax of the probabilities, or for a model
with an ordinal (CORN) head the median of its distribution, the decoder that model was trained
for. AUROC and calibration always use the probabilities themselves.

Defined behaviour where scikit-learn warns or returns NaN. A value that cannot be computed is
``None`` -- never NaN -- and ``result["undefined"][name]`` says why:

* macro and weighted averages run over the classes present in the targets (support > 0); a
  present class that is never predicted has precision ``None`` in ``per_class`` and counts as 0
  in the averages (scikit-learn's ``zero_division=0``, ``labels=<present classes>``);
* recall of a class absent from the targets is ``None``; F1 is ``None`` only when the class is
  in neither targets nor predictions;
* AUROC of a class needs positives and negatives in the targets; the macro AUROC averages the
  classes where it is defined and is ``None`` with fewer than two classes present (a
  single-class test set);
* quadratic kappa is ``None`` when targets and predictions are all one and the same class;
  MAE only without samples.

The confusion-matrix formulas work on stacks ``(..., K, K)`` so :mod:`ctcovid.metrics.stats`
reuses them for vectorized bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

AggregateMethod = Literal["mean", "majority"]
AGGREGATE_METHODS: tuple[str, ...] = ("mean", "majority")
DecisionRule = Literal["argmax", "median"]
DECISION_RULES: tuple[str, ...] = ("argmax", "median")
ECE_BINS = 15


def decide(probs: np.ndarray, rule: str = "argmax") -> np.ndarray:
    """Predicted class indices ``(N,)`` of probabilities ``(N, K)``.

    ``"argmax"``: the most probable class. ``"median"``: the median of the distribution over the
    ordered classes, the smallest ``k`` with ``P(y <= k) >= 0.5``; it equals the CORN rank
    decoder (the number of ``k`` with ``P(y > k) > 0.5``; Shi et al. 2021), which is what an
    ordinal head is trained for, and unlike the argmax never jumps over the middle of a
    bimodal distribution.
    """
    if rule not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {rule!r}; use one of {', '.join(DECISION_RULES)}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
    if rule == "argmax":
        return probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    above = 1.0 - np.cumsum(probs, axis=1)[:, :-1]  # (N, K-1) P(y > k)
    return (above > 0.5).sum(1).astype(np.int64)


def decision_for_head(head: str | None) -> DecisionRule:
    """The decision rule of a model's output head: ``"median"`` for ``"corn"``, else ``"argmax"``.

    ``head`` is the model's ``head`` keyword (a checkpoint's ``model.kwargs.head``; ``None``
    when absent, i.e. a plain linear head).
    """
    return "median" if head == "corn" else "argmax"


def aggregate_by(
    probs: np.ndarray,
    targets: np.ndarray,
    keys: Sequence[str],
    method: AggregateMethod = "mean",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Combine rows sharing a key (chunks -> scans, scans -> patients), in first-seen key order.

    ``method="mean"`` averages the probabilities. ``method="majority"`` lets each row vote for
    its argmax; the result is ``(votes_k + 0.5 * mean_prob_k) / (n + 0.5)``: half a vote at most,
    so the mean probability only breaks ties between classes with equal votes, rows still sum to
    1 and ``argmax`` is the majority decision (as :func:`ctcovid.models.aggregate_slices`).
    """
    if method not in AGGREGATE_METHODS:
        raise ValueError(f"unknown aggregation {method!r}; use one of {', '.join(AGGREGATE_METHODS)}")
    probs = np.asarray(probs, dtype=np.float64)
    order: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    k_classes = probs.shape[1] if probs.ndim == 2 else 0
    if not order:
        return np.zeros((0, k_classes)), np.zeros(0, dtype=np.int64), []
    out = []
    for idx in order.values():
        p = probs[idx]
        mean = p.mean(0)
        if method == "majority":
            votes = np.bincount(p.argmax(1), minlength=k_classes)
            mean = (votes + 0.5 * mean) / (len(idx) + 0.5)
        out.append(mean)
    out_t = np.array([targets[idx[0]] for idx in order.values()], dtype=np.int64)
    return np.stack(out), out_t, list(order)


def confusion_counts(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, rows = true class, columns = predicted class."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalize_rows(cm: np.ndarray) -> list[list[float] | None]:
    """Each row divided by its sum (fraction of a true class per prediction); ``None`` for empty rows."""
    cm = np.asarray(cm, dtype=np.float64)
    return [(row / row.sum()).tolist() if row.sum() > 0 else None for row in cm]


def nan_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise with NaN where b == 0 (NaN only internally: converted to None on output)."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def confusion_scores(cm: np.ndarray, positive: int | None = None) -> dict[str, np.ndarray]:
    """Metrics from confusion matrices ``(..., K, K)``; each value is ``(...,)`` or ``(..., K)``.

    NaN marks an undefined value (see the module docstring for the conventions).
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[-1]
    tp = np.diagonal(cm, axis1=-2, axis2=-1)  # (..., K)
    support = cm.sum(-1)  # true counts per class
    predicted = cm.sum(-2)
    n = support.sum(-1)
    precision = nan_div(tp, predicted)
    recall = nan_div(tp, support)
    f1 = nan_div(2 * tp, support + predicted)
    present = support > 0
    n_present = present.sum(-1)
    out = {
        "accuracy": nan_div(tp.sum(-1), n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }
    for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
        v = np.where(present, np.nan_to_num(per_class, nan=0.0), 0.0)  # zero_division=0
        out[f"{name}_macro"] = nan_div(v.sum(-1), n_present)
        out[f"{name}_weighted"] = nan_div((v * support).sum(-1), n)
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2.0  # quadratic disagreement weights
    expected = nan_div(support[..., :, None] * predicted[..., None, :], n[..., None, None])
    out["kappa_quadratic"] = 1.0 - nan_div((w * cm).sum((-2, -1)), (w * expected).sum((-2, -1)))
    out["mae"] = nan_div((np.sqrt(w) * cm).sum((-2, -1)), n)  # mean |true - predicted| in grades
    if positive is not None:
        ptp = cm[..., positive, positive]
        pfn = support[..., positive] - ptp
        pfp = predicted[..., positive] - ptp
        ptn = n - ptp - pfn - pfp
        out["binary_accuracy"] = nan_div(ptp + ptn, n)
        out["binary_precision"] = nan_div(ptp, ptp + pfp)
        out["binary_recall"] = nan_div(ptp, ptp + pfn)
        out["binary_specificity"] = nan_div(ptn, ptn + pfp)
        out["binary_f1"] = nan_div(2 * ptp, 2 * ptp + pfp + pfn)
    return out


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mann-Whitney AUROC (ties count one half) under sample weights, vectorized over resamples.

    Args:
        scores: ``(S,)`` scores, higher = more positive.
        positive: ``(S,)`` booleans.
        weights: ``(B, S)`` non-negative weights (bootstrap multiplicities); ``None``: all ones.

    Returns:
        ``(B,)`` AUROCs (``(1,)`` without weights), NaN where a resample lacks positives or negatives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    w = np.ones((1, scores.shape[0])) if weights is None else np.asarray(weights, dtype=np.float64)
    if scores.shape[0] == 0:
        return np.full(w.shape[0], np.nan)
    order = np.argsort(scores, kind="stable")
    s_sorted = scores[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # first index of each tie group
    w_sorted = w[:, order]
    pos_sorted = positive[order]
    wp = np.add.reduceat(w_sorted * pos_sorted, starts, axis=1)  # (B, G) positive weight per score
    wn = np.add.reduceat(w_sorted * ~pos_sorted, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each group
    u = (wp * (below + 0.5 * wn)).sum(1)
    return nan_div(u, wp.sum(1) * wn.sum(1))


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[float | None, list[dict[str, Any]]]:
    """ECE of the top-class confidence over ``n_bins`` equal-width bins, and the bins themselves.

    Bin ``i`` holds confidences in ``(i/n, (i+1)/n]`` (the first also 0). ECE is the
    count-weighted mean of ``|accuracy - confidence|`` over non-empty bins (Guo et al. 2017).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        return None, []
    conf = probs.max(1)
    correct = (probs.argmax(1) == targets).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, conf, minlength=n_bins)
    acc_sum = np.bincount(idx, correct, minlength=n_bins)
    ece = float(np.abs(acc_sum - conf_sum).sum() / len(targets))
    bins = [
        {
            "low": i / n_bins,
            "high": (i + 1) / n_bins,
            "count": int(count[i]),
            "confidence": float(conf_sum[i] / count[i]) if count[i] else None,
            "accuracy": float(acc_sum[i] / count[i]) if count[i] else None,
        }
        for i in range(n_bins)
    ]
    return ece, bins


def _f(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def classification_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    *,
    labels: Sequence[str] | None = None,
    positive: str | int | None = None,
    ordinal: bool = False,
    decision: str = "argmax",
    ece_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """All metrics of probabilities ``(N, K)`` against class indices ``(N,)``.

    Args:
        probs: Class probabilities; the prediction is :func:`decide` of them.
        targets: True class indices in ``0..K-1``.
        num_classes: ``K``.
        labels: Class names (default ``"0"``, ``"1"``, ...) used as keys of ``per_class``.
        positive: The class of the binary "positive vs rest" metrics (``"NCP"``: COVID-19 vs
            other pneumonia and normal), by name or index; ``None`` skips them.
        ordinal: Labels are ordered (severity, MosMed grades): adds ``kappa_quadratic`` and
            ``mae`` (:func:`ordinal_metrics`).
        decision: How a prediction is made from the probabilities (:func:`decide`):
            ``"argmax"``, or ``"median"`` for an ordinal head. Accuracy, precision, recall, F1,
            the confusion matrix, kappa and MAE follow it; AUROC and ECE use the probabilities.
            Recorded in the result as ``decision``.
        ece_bins: Bins of the expected calibration error.

    Returns:
        A JSON-ready dict; see the module docstring for undefined values and ``undefined``.
    """
    names = [str(x) for x in (labels if labels is not None else range(num_classes))]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} labels {names} for num_classes={num_classes}")
    pos = _positive_index(positive, names)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, num_classes)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    undefined: dict[str, str] = {}
    preds = decide(probs, decision)
    cm = confusion_counts(targets, preds, num_classes)
    s = confusion_scores(cm, pos)
    aucs = [_f(weighted_auc(probs[:, c], targets == c)[0]) for c in range(num_classes)]
    present = [c for c in range(num_classes) if cm[c].sum() > 0]
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        per_class[name] = {
            "support": int(cm[c].sum()),
            "predicted": int(cm[:, c].sum()),
            **{m: _f(s[m][c]) for m in ("precision", "recall", "f1")},
            "auroc": aucs[c],
        }
        if per_class[name]["precision"] is None and c in present:
            undefined[f"per_class.{name}.precision"] = "never predicted (counted as 0 in the averages)"
        if cm[c].sum() == 0:
            undefined[f"per_class.{name}.recall"] = "class not in the targets"
        if aucs[c] is None and len(targets):
            undefined[f"per_class.{name}.auroc"] = (
                "class not in the targets" if cm[c].sum() == 0 else "no other class in the targets"
            )
    valid_aucs = [a for a in aucs if a is not None]
    auroc = float(np.mean(valid_aucs)) if len(present) >= 2 and valid_aucs else None
    auroc_w = (
        float(sum(aucs[c] * cm[c].sum() for c in present) / cm.sum())  # type: ignore[operator]
        if auroc is not None
        else None
    )
    out: dict[str, Any] = {
        "n": len(targets),
        "labels": names,
        "decision": decision,
        "classes_present": [names[c] for c in present],
        "accuracy": _f(s["accuracy"]),
        **{
            f"{m}_{a}": _f(s[f"{m}_{a}"])
            for a in ("macro", "weighted")
            for m in ("precision", "recall", "f1")
        },
        "auroc": auroc,
        "auroc_weighted": auroc_w,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "confusion_normalized": normalize_rows(cm),
    }
    if len(targets) == 0:
        undefined["*"] = "no samples"
    elif auroc is None:
        undefined["auroc"] = f"needs two classes in the targets, found {[names[c] for c in present]}"
    if pos is not None:
        out["binary"] = _binary(s, probs, targets, pos, names, undefined)
    if ordinal:
        out["kappa_quadratic"] = _f(s["kappa_quadratic"])
        out["mae"] = _f(s["mae"])
        if out["kappa_quadratic"] is None and len(targets):
            undefined["kappa_quadratic"] = "targets and predictions are all the same single class"
    out["ece"], out["calibration_bins"] = expected_calibration_error(probs, targets, ece_bins)
    out["undefined"] = undefined
    return out


def ordinal_metrics(probs: np.ndarray, targets: np.ndarray, *, decision: str = "argmax") -> dict[str, Any]:
    """Agreement of ordered predictions with ordered targets, the scores of graded severity.

    ``kappa_quadratic``: Cohen's kappa with quadratic disagreement weights ``(i - j)^2``
    (scikit-learn's ``cohen_kappa_score(weights="quadratic")``): 1 = perfect, 0 = chance; a
    miss by two grades costs four times a miss by one. ``None`` when targets and predictions
    are all one and the same class. ``mae``: mean ``|predicted index - true index|``, in grades.
    ``None`` without samples. Predictions are :func:`decide` of ``probs`` with ``decision``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    k = probs.shape[1] if probs.ndim == 2 else 0
    s = confusion_scores(confusion_counts(targets, decide(probs.reshape(-1, k), decision), k))
    return {"kappa_quadratic": _f(s["kappa_quadratic"]), "mae": _f(s["mae"]), "decision": decision}


def _positive_index(positive: str | int | None, names: list[str]) -> int | None:
    if positive is None:
        return None
    if isinstance(positive, int) and not isinstance(positive, bool):
        if not 0 <= positive < len(names):
            raise ValueError(f"positive class index {positive} is outside 0..{len(names) - 1}")
        return positive
    if positive not in names:
        raise ValueError(f"positive class {positive!r} is not one of the labels {names}")
    return names.index(str(positive))


def _binary(
    s: dict[str, np.ndarray],
    probs: np.ndarray,
    targets: np.ndarray,
    pos: int,
    names: list[str],
    undefined: dict[str, str],
) -> dict[str, Any]:
    b: dict[str, Any] = {"positive": names[pos]}
    for m in ("accuracy", "precision", "recall", "specificity", "f1"):
        b[m] = _f(s[f"binary_{m}"])
    b["auroc"] = _f(weighted_auc(probs[:, pos], targets == pos)[0])
    reasons = {
        "precision": "the positive class is never predicted",
        "recall": "no positive samples",
        "specificity": "no negative samples",
        "f1": "no positive samples and none predicted",
        "auroc": "needs positive and negative samples",
    }
    for m, why in reasons.items():
        if b[m] is None and len(targets):
            undefined[f"binary.{m}"] = why
    return b
