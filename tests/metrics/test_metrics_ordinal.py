"""Ordinal decisions and scores: the median decoder, quadratic kappa and MAE in grades."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ctcovid.metrics.metrics import (
    classification_metrics,
    decide,
    decision_for_head,
    ordinal_metrics,
)
from ctcovid.metrics.stats import patient_weights, resampled_scores
from ctcovid.models.blocks import corn_log_probs

# Hand-made distributions over three ordered classes and their (argmax, median).
HAND_MADE = [
    ([0.45, 0.10, 0.45], 0, 1),  # bimodal: the median sits between the modes
    ([0.60, 0.00, 0.40], 0, 0),
    ([0.30, 0.10, 0.60], 2, 2),
    ([0.50, 0.50, 0.00], 0, 0),  # P(y > 0) = 0.5 is not > 0.5
    ([0.20, 0.25, 0.55], 2, 2),
    ([0.40, 0.35, 0.25], 0, 1),
]


def _random(seed: int, n: int = 90, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = 1.5 * np.eye(k)[y] + rng.normal(0, 1.2, (n, k))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y


def test_median_decision_on_hand_made_distributions() -> None:
    probs = np.array([p for p, _, _ in HAND_MADE])
    assert decide(probs, "median").tolist() == [m for _, _, m in HAND_MADE]
    assert decide(probs, "argmax").tolist() == [a for _, a, _ in HAND_MADE]


def test_median_decision_is_the_corn_rank_decoder() -> None:
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * 2  # K = 5
    probs = corn_log_probs(logits).exp().double().numpy()
    rank = (logits.sigmoid().cumprod(1) > 0.5).sum(1).numpy()  # CORN: count of P(y > k) > 0.5
    np.testing.assert_array_equal(decide(probs, "median"), rank)


def test_unknown_decision_rule_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown decision rule 'mode'; use one of argmax, median"):
        decide(np.full((2, 3), 1 / 3), "mode")


def test_decision_of_a_head() -> None:
    assert decision_for_head("corn") == "median"
    assert decision_for_head("linear") == decision_for_head(None) == "argmax"


@pytest.mark.parametrize("decision", ["argmax", "median"])
def test_quadratic_kappa_equals_scikit_learn(decision: str) -> None:
    probs, y = _random(1)
    pred = decide(probs, decision)
    expected = skm.cohen_kappa_score(y, pred, labels=list(range(4)), weights="quadratic")
    assert ordinal_metrics(probs, y, decision=decision)["kappa_quadratic"] == pytest.approx(expected)


def test_mae_is_the_mean_absolute_error_in_grades() -> None:
    probs, y = _random(2)
    pred = decide(probs, "median")
    assert ordinal_metrics(probs, y, decision="median")["mae"] == pytest.approx(np.abs(pred - y).mean())


def test_ordinal_metrics_of_no_samples_are_none() -> None:
    m = ordinal_metrics(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert m["kappa_quadratic"] is None and m["mae"] is None


def test_classification_metrics_follow_the_decision_but_auroc_does_not() -> None:
    probs, y = _random(3)
    by_median = classification_metrics(probs, y, 4, ordinal=True, decision="median")
    by_argmax = classification_metrics(probs, y, 4, ordinal=True)
    pred = decide(probs, "median")
    assert by_median["decision"] == "median" and by_argmax["decision"] == "argmax"
    assert by_median["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert by_median["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert by_median["confusion"] == skm.confusion_matrix(y, pred, labels=list(range(4))).tolist()
    assert by_median["mae"] == pytest.approx(np.abs(pred - y).mean())
    assert by_median["auroc"] == by_argmax["auroc"]
    assert by_median["confusion"] != by_argmax["confusion"]  # the fixture tells the rules apart


def test_resampled_ordinal_scores_follow_the_decision() -> None:
    probs, y = _random(4, n=40)
    groups = [f"p{i // 2}" for i in range(len(y))]
    w = patient_weights(groups, 4, seed=0)
    got = resampled_scores(probs, y, w, ordinal=True, decision="median")
    for b in range(4):
        idx = np.repeat(np.arange(len(y)), w[b].astype(int))
        m = ordinal_metrics(probs[idx], y[idx], decision="median")
        assert got["kappa_quadratic"][b] == pytest.approx(m["kappa_quadratic"])
        assert got["mae"][b] == pytest.approx(m["mae"])
