"""Metrics (pure numpy), bootstrap and paired tests (numpy/scipy) and plots (matplotlib, loaded lazily)."""

from ctcovid.metrics.metrics import (
    aggregate_by,
    classification_metrics,
    confusion_counts,
    expected_calibration_error,
    weighted_auc,
)
from ctcovid.metrics.stats import bootstrap_ci, delong_covariance, delong_test, paired_bootstrap

__all__ = [
    "aggregate_by",
    "bootstrap_ci",
    "classification_metrics",
    "confusion_counts",
    "delong_covariance",
    "delong_test",
    "expected_calibration_error",
    "paired_bootstrap",
    "weighted_auc",
]
