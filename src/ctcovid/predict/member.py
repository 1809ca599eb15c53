"""One trained model of a :class:`~ctcovid.predict.predictor.Predictor` and what its checkpoint's
``reliability`` data says about trusting it: temperature, feature density, OOD thresholds, refer
threshold and the training cohort's quality reference (fitted by :mod:`ctcovid.train.reliability`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ctcovid.metrics import reliability as R


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


DEFAULT_REFER_UNCERTAINTY = 0.6  # as ReliabilityConfig.refer_uncertainty, for checkpoints without it


@dataclass
class Member:
    """One trained model of a predictor, with what its checkpoint says about trusting it."""

    model: nn.Module
    temperature: float = 1.0
    density: R.FeatureDensity | None = None
    ood: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> {median, threshold}
    refer_uncertainty: float | None = None
    ood_method: str | None = None
    quality_reference: dict[str, Any] | None = None

    @classmethod
    def build(cls, model: nn.Module, reliability: dict[str, Any] | None) -> Member:
        r = reliability or {}
        density = R.FeatureDensity.from_state(r["feature_density"]) if r.get("feature_density") else None
        return cls(
            model,
            temperature=float(r.get("temperature", 1.0)),
            density=density,
            ood=dict(r.get("ood", {})),
            refer_uncertainty=r.get("refer_uncertainty"),
            ood_method=r.get("ood_method"),
            quality_reference=r.get("quality_reference"),
        )

    def ood_score(self, method: str, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray | None:
        """Per-input score scaled so 0 = the validation median and 1 = the threshold; None if unfitted."""
        fitted = self.ood.get(method)
        if fitted is None:
            return None
        if method == "mahalanobis":
            if self.density is None or features is None:
                return None
            raw = self.density.score(features)
        else:
            raw = R.energy_score(logits)
        scale = fitted["threshold"] - fitted["median"]
        return (raw - fitted["median"]) / (scale if scale > 0 else 1.0)
