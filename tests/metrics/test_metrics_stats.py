"""Patient bootstrap, paired bootstrap and DeLong against brute-force computations."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ctcovid.metrics.metrics import classification_metrics
from ctcovid.metrics.stats import (
    bootstrap_ci,
    delong_covariance,
    delong_test,
    paired_bootstrap,
    patient_weights,
    resampled_scores,
)


def _fixture(seed: int, n: int = 120, k: int = 3) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    patients = [f"p{i // 2}" for i in range(n)]  # two scans per patient
    return probs, y, patients


def _brute_delong(scores: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) by definition: psi over every (positive, negative) pair."""
    x, yneg = scores[:, pos], scores[:, ~pos]
    m, n = x.shape[1], yneg.shape[1]
    psi = (x[:, :, None] > yneg[:, None, :]) + 0.5 * (x[:, :, None] == yneg[:, None, :])  # (M, m, n)
    aucs = psi.mean((1, 2))  # the Mann-Whitney statistic / (m n)
    v10 = psi.mean(2)  # per positive
    v01 = psi.mean(1)  # per negative
    k = len(scores)
    s10, s01 = np.zeros((k, k)), np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = ((v10[r] - aucs[r]) * (v10[s] - aucs[s])).sum() / (m - 1)
            s01[r, s] = ((v01[r] - aucs[r]) * (v01[s] - aucs[s])).sum() / (n - 1)
    return aucs, s10 / m + s01 / n


def test_delong_equals_brute_force_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos = rng.random(60) < 0.4
    scores = np.stack([rng.integers(0, 6, 60) + 2.0 * pos, rng.normal(size=60) + pos]).astype(float)
    aucs, cov = delong_covariance(scores, pos)
    ref_aucs, ref_cov = _brute_delong(scores, pos)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)


def test_delong_test_of_identical_scorers_finds_no_difference_and_of_a_better_one_does() -> None:
    rng = np.random.default_rng(1)
    pos = rng.random(200) < 0.5
    good = pos + rng.normal(0, 0.5, 200)
    noise = rng.normal(0, 1, 200)
    same = delong_test(good, good, pos)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    better = delong_test(good, noise, pos)
    assert better["diff"] > 0.3 and better["p_value"] < 1e-6
    assert better["z"] == pytest.approx(better["diff"] / better["se"])


def test_delong_with_one_positive_is_none_with_a_reason() -> None:
    d = delong_test(np.arange(5.0), np.arange(5.0), np.array([1, 0, 0, 0, 0], bool))
    assert d["p_value"] is None and "two positive" in d["reason"]


def test_resampled_scores_equal_the_point_metrics_on_explicit_resamples() -> None:
    probs, y, patients = _fixture(2)
    w = patient_weights(patients, 5, seed=3)
    got = resampled_scores(probs, y, w, positive=0, ordinal=True)
    for b in range(5):
        idx = np.repeat(np.arange(len(y)), w[b].astype(int))  # the resample as explicit rows
        m = classification_metrics(probs[idx], y[idx], 3, positive=0, ordinal=True)
        for name in (
            "accuracy",
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "auroc",
            "kappa_quadratic",
            "mae",
        ):
            assert got[name][b] == pytest.approx(m[name]), name
        for name in ("accuracy", "precision", "recall", "f1", "auroc"):
            assert got[f"binary_{name}"][b] == pytest.approx(m["binary"][name]), name


def test_bootstrap_resamples_patients_not_scans() -> None:
    w = patient_weights(["a", "a", "b", "c", "c", "c"], 200, seed=0)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    np.testing.assert_array_equal(w[:, [0, 2, 3]].sum(1), 3)  # three patients drawn each time


def test_bootstrap_ci_is_seeded_brackets_the_estimate_and_is_fast() -> None:
    probs, y, patients = _fixture(4, n=600)
    t0 = time.perf_counter()
    ci = bootstrap_ci(probs, y, patients, positive=0, ordinal=True, n_resamples=1000, seed=7)
    assert time.perf_counter() - t0 < 2.0  # vectorized: ~0.1 s on one core
    assert ci == bootstrap_ci(probs, y, patients, positive=0, ordinal=True, n_resamples=1000, seed=7)
    m = classification_metrics(probs, y, 3, positive=0)
    assert ci["accuracy"]["low"] < m["accuracy"] < ci["accuracy"]["high"]
    assert ci["auroc"]["low"] < m["auroc"] < ci["auroc"]["high"]
    assert ci["accuracy"]["n_defined"] == 1000


def test_bootstrap_of_a_single_class_set_reports_undefined_auroc() -> None:
    probs, _, patients = _fixture(5, n=20)
    ci = bootstrap_ci(probs, np.zeros(20, dtype=int), patients, n_resamples=100)
    assert ci["auroc"] == {"low": None, "high": None, "n_defined": 0}
    assert ci["accuracy"]["n_defined"] == 100


def test_paired_bootstrap_of_accuracy() -> None:
    rng = np.random.default_rng(6)
    a = rng.random(100) < 0.9
    patients = [f"p{i}" for i in range(100)]
    same = paired_bootstrap(a, a, patients, n_resamples=500)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    worse = paired_bootstrap(a, np.zeros(100, bool), patients, n_resamples=500)
    assert worse["diff"] == pytest.approx(a.mean()) and worse["p_value"] < 0.01
    assert worse["low"] < worse["diff"] < worse["high"]
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(a, a[:5], patients)
