"""classification_metrics against scikit-learn, including the edge cases it warns about."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from ctcovid.metrics.metrics import (
    aggregate_by,
    classification_metrics,
    expected_calibration_error,
    weighted_auc,
)

LABELS = ["NCP", "CP", "Normal"]
# scikit-learn warns where a value is undefined; the tests check we return None there instead.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")


def _probs(rng: np.random.Generator, n: int, k: int = 3) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _no_nan(obj: Any, path: str = "") -> None:
    """No NaN or inf anywhere: undefined values must be None."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _no_nan(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _no_nan(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), path


def _check_against_sklearn(probs: np.ndarray, y: np.ndarray, k: int = 3, positive: int = 0) -> dict[str, Any]:
    m = classification_metrics(probs, y, k, labels=LABELS[:k], positive=positive, ordinal=True)
    pred = probs.argmax(1)
    present = sorted(set(y.tolist()))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, pred, labels=present, average=avg, zero_division=0
        )
        assert m[f"precision_{avg}"] == pytest.approx(p)
        assert m[f"recall_{avg}"] == pytest.approx(r)
        assert m[f"f1_{avg}"] == pytest.approx(f)
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    kappa = skm.cohen_kappa_score(y, pred, labels=list(range(k)), weights="quadratic")
    if math.isnan(kappa):
        assert m["kappa_quadratic"] is None
    else:
        assert m["kappa_quadratic"] == pytest.approx(kappa)
    b = m["binary"]
    yb, pb = y == positive, pred == positive
    assert b["accuracy"] == pytest.approx(skm.accuracy_score(yb, pb))
    if yb.any():
        assert b["recall"] == pytest.approx(skm.recall_score(yb, pb))
    if pb.any():
        assert b["precision"] == pytest.approx(skm.precision_score(yb, pb))
    if yb.any() or pb.any():
        assert b["f1"] == pytest.approx(skm.f1_score(yb, pb))
    _no_nan(m)
    return m


def test_every_metric_equals_scikit_learn_on_a_random_fixture() -> None:
    rng = np.random.default_rng(0)
    probs, y = _probs(rng, 80), rng.integers(0, 3, 80)
    m = _check_against_sklearn(probs, y)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["auroc_weighted"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="weighted")
    )
    pred = probs.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for c, name in enumerate(LABELS):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx(
            (p[c], r[c], f[c], s[c])
        )
        assert pc["auroc"] == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]))
    assert m["binary"]["auroc"] == pytest.approx(skm.roc_auc_score(y == 0, probs[:, 0]))
    assert m["undefined"] == {}


def test_a_class_never_predicted_has_precision_none_with_a_reason_and_counts_as_zero() -> None:
    rng = np.random.default_rng(1)
    probs, y = _probs(rng, 60), rng.integers(0, 3, 60)
    probs[:, 1] = 0.0  # CP is never the argmax
    probs /= probs.sum(1, keepdims=True)
    m = _check_against_sklearn(probs, y)
    assert m["per_class"]["CP"]["precision"] is None
    assert m["per_class"]["CP"]["recall"] == 0.0 and m["per_class"]["CP"]["f1"] == 0.0
    assert "never predicted" in m["undefined"]["per_class.CP.precision"]


def test_a_class_absent_from_the_targets_is_left_out_of_the_averages() -> None:
    rng = np.random.default_rng(2)
    probs, y = _probs(rng, 60), rng.choice([0, 2], 60)  # no CP in the truth, some predicted
    m = _check_against_sklearn(probs, y)
    assert m["classes_present"] == ["NCP", "Normal"]
    assert m["per_class"]["CP"]["recall"] is None and m["per_class"]["CP"]["auroc"] is None
    assert m["per_class"]["CP"]["precision"] == 0.0  # predicted, never right
    assert "not in the targets" in m["undefined"]["per_class.CP.auroc"]
    present = [0, 2]
    expected = np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in present])
    assert m["auroc"] == pytest.approx(expected)


def test_a_single_class_test_set_gives_defined_values_and_reasons_not_nan() -> None:
    rng = np.random.default_rng(3)
    probs, y = _probs(rng, 20), np.zeros(20, dtype=np.int64)
    m = _check_against_sklearn(probs, y)
    assert m["auroc"] is None and "needs two classes" in m["undefined"]["auroc"]
    assert m["binary"]["specificity"] is None and m["binary"]["auroc"] is None
    assert m["recall_macro"] == pytest.approx((probs.argmax(1) == 0).mean())
    assert m["kappa_quadratic"] == pytest.approx(0.0)  # sklearn agrees: no agreement beyond chance


def test_all_one_class_and_predicted_so_kappa_is_none_with_a_reason() -> None:
    probs = np.tile([0.8, 0.1, 0.1], (5, 1))
    m = classification_metrics(probs, np.zeros(5, dtype=int), 3, labels=LABELS, ordinal=True)
    assert m["accuracy"] == 1.0 and m["kappa_quadratic"] is None
    assert "same single class" in m["undefined"]["kappa_quadratic"]
    _no_nan(m)


def test_no_samples_is_defined() -> None:
    m = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int), 3, positive="NCP", labels=LABELS)
    assert m["n"] == 0 and m["accuracy"] is None and m["auroc"] is None and m["ece"] is None
    assert m["undefined"]["*"] == "no samples"
    _no_nan(m)


def test_unknown_positive_class_names_the_labels() -> None:
    with pytest.raises(
        ValueError, match=r"positive class 'COVID' is not one of the labels \['NCP', 'CP', 'Normal'\]"
    ):
        classification_metrics(np.eye(3), np.arange(3), 3, labels=LABELS, positive="COVID")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0.34, 1.0)), min_size=1, max_size=30)
)
def test_property_confusion_metrics_equal_scikit_learn(cases: list[tuple[int, int, float]]) -> None:
    y = np.array([c[0] for c in cases])
    probs = np.full((len(cases), 3), 0.0)
    for i, (_, p, conf) in enumerate(cases):
        probs[i] = (1 - conf) / 2
        probs[i, p] = conf
    _check_against_sklearn(probs, y)


def test_weighted_auc_equals_scikit_learn_with_ties_and_sample_weights() -> None:
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 5, 50).astype(float)  # many ties
    pos = rng.random(50) < 0.4
    w = rng.integers(0, 4, (3, 50)).astype(float)
    got = weighted_auc(scores, pos, w)
    for b in range(3):
        assert got[b] == pytest.approx(skm.roc_auc_score(pos, scores, sample_weight=w[b]))
    assert weighted_auc(scores, pos)[0] == pytest.approx(skm.roc_auc_score(pos, scores))
    assert np.isnan(weighted_auc(scores, np.zeros(50, bool))[0])


def test_ece_equals_a_loop_over_bins() -> None:
    rng = np.random.default_rng(5)
    probs, y = _probs(rng, 200), rng.integers(0, 3, 200)
    ece, bins = expected_calibration_error(probs, y, 15)
    conf, correct = probs.max(1), probs.argmax(1) == y
    expected = 0.0
    for i in range(15):
        lo, hi = i / 15, (i + 1) / 15
        sel = (conf > lo) & (conf <= hi) if i else (conf <= hi)
        if sel.any():
            expected += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
            assert bins[i]["count"] == sel.sum()
    assert ece == pytest.approx(expected)
    assert sum(b["count"] for b in bins) == 200


def test_majority_vote_counts_chunk_argmaxes_and_breaks_ties_by_mean_probability() -> None:
    probs = np.array(
        [
            [0.9, 0.1, 0.0],  # scan a: votes NCP, CP, CP -> CP although the mean favours NCP
            [0.4, 0.6, 0.0],
            [0.45, 0.55, 0.0],
            [0.9, 0.1, 0.0],  # scan b: one vote each for NCP and CP; the mean breaks the tie: NCP
            [0.3, 0.7, 0.0],
        ]
    )
    targets = np.array([1, 1, 1, 0, 0])
    keys = ["a", "a", "a", "b", "b"]
    mean_p, _, _ = aggregate_by(probs, targets, keys, "mean")
    vote_p, vote_t, ids = aggregate_by(probs, targets, keys, "majority")
    assert ids == ["a", "b"] and vote_t.tolist() == [1, 0]
    assert mean_p.argmax(1).tolist() == [0, 0]
    assert vote_p.argmax(1).tolist() == [1, 0]
    np.testing.assert_allclose(vote_p.sum(1), 1.0)
