"""Classification metrics on probabilities, at chunk, scan or patient level.

Defined behaviour where scikit-learn would warn or return NaN: AUROC is computed one-vs-rest over
the classes present in the targets and is ``None`` when fewer than two are present; precision of a
class never predicted is 0 (``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def aggregate_by(
    probs: np.ndarray, targets: np.ndarray, keys: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean probability per key (e.g. chunks -> scans, scans -> patients), in first-seen key order."""
    order: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    out_p = (
        np.stack([probs[idx].mean(0) for idx in order.values()]) if order else np.zeros((0, probs.shape[1]))
    )
    out_t = np.array([targets[idx[0]] for idx in order.values()], dtype=np.int64)
    return out_p, out_t, list(order)


def classification_metrics(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro F1 / precision / recall and macro one-vs-rest AUROC."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        return {"n": 0, "accuracy": None, "f1_macro": None, "auroc": None}
    pred = probs.argmax(1)
    labels = list(range(num_classes))
    present = sorted(set(targets.tolist()))
    out: dict[str, Any] = {
        "n": len(targets),
        "accuracy": float((pred == targets).mean()),
        "f1_macro": float(f1_score(targets, pred, labels=present, average="macro", zero_division=0)),
        "precision_macro": float(
            precision_score(targets, pred, labels=present, average="macro", zero_division=0)
        ),
        "recall_macro": float(recall_score(targets, pred, labels=present, average="macro", zero_division=0)),
        "auroc": None,
    }
    if len(present) >= 2:
        aucs = [roc_auc_score(targets == c, probs[:, c]) for c in present if c in labels]
        out["auroc"] = float(np.mean(aucs))
    return out
