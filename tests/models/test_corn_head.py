"""The ordinal CORN head (Shi et al. 2021): log-probabilities that the usual consumers can use."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ctcovid.models import ModelArgumentError, create_model, list_models
from ctcovid.models.blocks import corn_log_probs


def _corn_model(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("r3d_10", num_classes=num_classes, head="corn").eval()
    nn.init.normal_(model.fc.weight, std=0.5)  # random, large enough to spread the conditionals
    nn.init.normal_(model.fc.bias, std=2.0)
    return model


def _x(batch: int = 6) -> torch.Tensor:
    return torch.randn(batch, 1, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def test_output_exponentiates_to_a_distribution() -> None:
    with torch.no_grad():
        out = _corn_model()(_x())
    assert out.shape == (6, 5)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(6))
    torch.testing.assert_close(out.softmax(1), out.exp())  # softmax gives the same probabilities


def test_exceedance_probability_is_the_product_of_the_conditional_sigmoids() -> None:
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 3
    probs = corn_log_probs(logits).exp()
    exceed = 1 - probs.cumsum(1)[:, :-1]  # P(y > k), k = 0..K-2
    torch.testing.assert_close(exceed, logits.sigmoid().cumprod(1))


def test_exceedance_probabilities_are_monotone_for_random_weights() -> None:
    model = _corn_model()
    with torch.no_grad():
        exceed = 1 - model(_x()).exp().cumsum(1)[:, :-1]  # (B, K-1) P(y > k)
    assert (exceed[:, 1:] <= exceed[:, :-1] + 1e-6).all()
    assert ((exceed > 0.01) & (exceed < 0.99)).any()  # not a trivially saturated case


def test_cross_entropy_on_the_output_equals_the_corn_loss() -> None:
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(2)) * 2  # K = 4 classes
    y = torch.tensor([0, 1, 2, 3] * 3)
    # CORN: task k (is y > k?) is trained on the samples with y > k - 1, i.e. y >= k.
    corn = torch.zeros(())
    for k in range(logits.shape[1]):
        subset = y >= k
        corn = corn + F.binary_cross_entropy_with_logits(
            logits[subset, k], (y[subset] > k).float(), reduction="sum"
        )
    torch.testing.assert_close(F.cross_entropy(corn_log_probs(logits), y), corn / len(y))


def test_log_probabilities_stay_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[200.0, -200.0], [-200.0, 200.0], [200.0, 200.0]])
    out = corn_log_probs(logits)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp(), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


def test_every_builder_takes_the_corn_head_with_one_output_per_class_boundary() -> None:
    for name in list_models():
        with torch.device("meta"):  # shapes only
            model = create_model(name, num_classes=4, head="corn")
        assert model.head == "corn", name
        assert model.fc.out_features == 3, name


def test_slice_model_with_corn_head_returns_normalised_log_probabilities() -> None:
    torch.manual_seed(0)
    model = create_model("resnet50_2d_slices", num_classes=3, head="corn").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 3, 32, 32))  # three slices a volume
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


def test_corn_with_one_class_is_refused_naming_the_value() -> None:
    with pytest.raises(ModelArgumentError, match="head='corn' .* needs num_classes >= 2, got 1"):
        create_model("r3d_10", num_classes=1, head="corn")


def test_unknown_head_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ModelArgumentError, match="head must be one of linear, corn, got 'coral'"):
        create_model("r3d_10", head="coral")


def test_linear_head_is_the_default_and_returns_plain_logits() -> None:
    model = create_model("r3d_10", num_classes=3)
    assert model.head == "linear" and model.fc.out_features == 3
