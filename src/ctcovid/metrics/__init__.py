"""Metrics (pure numpy / scikit-learn) and plots (matplotlib, loaded lazily)."""

from ctcovid.metrics.metrics import aggregate_by, classification_metrics

__all__ = ["aggregate_by", "classification_metrics"]
