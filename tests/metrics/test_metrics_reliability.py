from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from ctcovid.metrics.metrics import expected_calibration_error
from ctcovid.metrics.reliability import (
    FeatureDensity,
    energy_score,
    fit_temperature,
    mutual_information,
    normalized_entropy,
    ood_auroc,
    risk_coverage,
    scan_nll,
    temper,
    threshold_at,
)


def test_tempering_probabilities_equals_dividing_the_logits() -> None:
    z = np.random.default_rng(0).normal(size=(50, 3)) * 4
    for t in (0.3, 1.0, 2.5):
        np.testing.assert_allclose(temper(softmax(z, 1), t), softmax(z / t, 1), atol=1e-9)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits 4x too large for labels drawn from softmax of the true logits."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z, 1)])
    return softmax(4 * z, 1), y


def test_fitted_temperature_undoes_overconfidence_and_lowers_ece_on_new_data() -> None:
    probs, y = _overconfident(2000, 0)
    t = fit_temperature(probs, y)
    assert 3.0 < t < 5.0  # the true factor is 4
    test_p, test_y = _overconfident(2000, 1)
    before = expected_calibration_error(test_p, test_y)[0]
    after = expected_calibration_error(temper(test_p, t), test_y)[0]
    assert after < before / 2
    np.testing.assert_array_equal(temper(test_p, t).argmax(1), test_p.argmax(1))  # accuracy unchanged


def test_temperature_is_fitted_on_the_scan_mean_of_chunk_probabilities() -> None:
    probs, y = _overconfident(600, 2)
    groups = [f"s{i // 3}" for i in range(600)]
    y = np.repeat(y[::3], 3)  # a scan's chunks share its label
    t = fit_temperature(probs, y, groups)
    assert scan_nll(temper(probs, t), y, groups) < scan_nll(probs, y, groups)


def test_temperature_stays_one_when_there_is_nothing_to_fit() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_normalized_entropy_is_zero_for_certainty_and_one_for_uniform() -> None:
    u = normalized_entropy(np.array([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.8, 0.1, 0.1]]))
    np.testing.assert_allclose(u[:2], [0.0, 1.0], atol=1e-9)
    assert 0.5 < u[2] < 0.6


def test_mutual_information_is_zero_when_samples_agree_and_positive_when_they_disagree() -> None:
    agree = np.tile(np.array([[0.5, 0.3, 0.2]]), (4, 1))[None]
    disagree = np.eye(3)[None]
    assert mutual_information(agree)[0] == pytest.approx(0.0, abs=1e-9)
    assert mutual_information(disagree)[0] == pytest.approx(1.0)


def test_feature_density_scores_points_far_from_the_training_classes_higher() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 8, [5.0] * 8])
    y = rng.integers(0, 2, 400)
    f = means[y] + rng.normal(size=(400, 8))
    d = FeatureDensity.fit(f, y, num_classes=3)  # class 2 absent from training: skipped
    near = means[rng.integers(0, 2, 100)] + rng.normal(size=(100, 8))
    far = rng.normal(size=(100, 8)) + 20.0
    assert ood_auroc(d.score(near), d.score(far)) == 1.0
    restored = FeatureDensity.from_state(d.state())
    np.testing.assert_allclose(restored.score(near), d.score(near), rtol=1e-4)


def test_feature_density_fits_with_fewer_samples_than_features() -> None:
    rng = np.random.default_rng(1)
    f, y = rng.normal(size=(30, 256)), rng.integers(0, 3, 30)
    assert np.isfinite(FeatureDensity.fit(f, y, 3).score(f)).all()


def test_energy_is_higher_for_flat_small_logits_than_for_confident_ones() -> None:
    e = energy_score(np.array([[10.0, 0, 0], [0.1, 0.0, 0.1]]))
    assert e[1] > e[0]


def test_threshold_is_the_quantile_of_in_distribution_scores() -> None:
    s = np.arange(101.0)
    assert threshold_at(s, 0.95) == pytest.approx(95.0)
    with pytest.raises(ValueError, match="no finite"):
        threshold_at(np.array([np.nan]), 0.9)


def test_ood_auroc_counts_ties_half_and_needs_both_sides() -> None:
    assert ood_auroc(np.array([1.0, 2.0]), np.array([2.0, 3.0])) == pytest.approx(0.875)
    assert ood_auroc(np.array([]), np.array([1.0])) is None


def test_risk_coverage_orders_by_confidence_and_ends_at_the_error_rate() -> None:
    conf = np.array([0.9, 0.2, 0.8, 0.5])
    correct = np.array([True, False, True, False])
    rc = risk_coverage(conf, correct)
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert rc["risk"] == [0.0, 0.0, pytest.approx(1 / 3), 0.5]
    assert rc["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)
