"""Metrics (pure numpy), bootstrap and paired tests (numpy/scipy) and plots (matplotlib, loaded lazily)."""

from ctcovid.metrics.metrics import (
    aggregate_by,
    classification_metrics,
    confusion_counts,
    decide,
    decision_for_head,
    expected_calibration_error,
    ordinal_metrics,
    weighted_auc,
)
from ctcovid.metrics.stats import bootstrap_ci, delong_covariance, delong_test, paired_bootstrap

__all__ = [
    "aggregate_by",
    "bootstrap_ci",
    "classification_metrics",
    "confusion_counts",
    "decide",
    "decision_for_head",
    "delong_covariance",
    "delong_test",
    "expected_calibration_error",
    "ordinal_metrics",
    "paired_bootstrap",
    "weighted_auc",
]
