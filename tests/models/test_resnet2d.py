"""2D slice baseline: ResNet-50 on slices, slice aggregation, volume wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctcovid.models import ModelArgumentError, SliceVoteModel, aggregate_slices, create_model
from ctcovid.models.blocks import Bottleneck

WEAK_0 = [1.0, 0.9, -9.0]  # argmax class 0, but only just
STRONG_1 = [-9.0, 9.0, -9.0]  # argmax class 1, confidently


def test_resnet50_2d_is_a_2d_bottleneck_network() -> None:
    model = create_model("resnet50_2d").eval()
    assert isinstance(model.stem.conv, nn.Conv2d) and isinstance(model.layer3[0], Bottleneck)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_majority_counts_votes_where_mean_probability_disagrees() -> None:
    logits = torch.tensor([WEAK_0, WEAK_0, STRONG_1])  # (D=3, K=3)
    majority = aggregate_slices(logits, "majority")
    mean = aggregate_slices(logits, "mean")
    assert majority.argmax().item() == 0  # two votes against one
    assert mean.argmax().item() == 1  # but class 1 has the higher mean probability
    assert torch.allclose(mean, logits.softmax(dim=-1).mean(dim=0))


def test_majority_result_is_vote_share_plus_at_most_half_a_vote() -> None:
    logits = torch.tensor([WEAK_0, WEAK_0, STRONG_1])
    majority = aggregate_slices(logits, "majority")
    assert torch.isclose(majority.sum(), torch.tensor(1.0))
    shares = torch.tensor([2 / 3, 1 / 3, 0.0])
    assert (majority - shares).abs().max() <= 0.5 / 3.5


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 3, 0, 1]])
def test_majority_tie_is_broken_by_mean_probability(order: list[int]) -> None:
    slices = torch.tensor([WEAK_0, WEAK_0, STRONG_1, STRONG_1])[order]  # 2 votes each for 0 and 1
    majority = aggregate_slices(slices, "majority")
    assert majority.argmax().item() == 1  # class 1's mean probability is higher
    swapped = slices[:, [1, 0, 2]]  # now class 0 is the confident one
    assert aggregate_slices(swapped, "majority").argmax().item() == 0


def test_batched_aggregation_matches_per_volume() -> None:
    logits = torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(0))
    for method in ("majority", "mean"):
        batched = aggregate_slices(logits, method)  # type: ignore[arg-type]
        assert batched.shape == (4, 3)
        single = torch.stack([aggregate_slices(v, method) for v in logits])  # type: ignore[arg-type]
        assert torch.allclose(batched, single)


def test_aggregation_rejects_unknown_method_and_bad_shape() -> None:
    with pytest.raises(ModelArgumentError, match="use one of majority, mean"):
        aggregate_slices(torch.zeros(3, 2), "median")  # type: ignore[arg-type]
    with pytest.raises(ModelArgumentError, match=r"got shape \(3,\)"):
        aggregate_slices(torch.zeros(3))


def _toy_2d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize(("method", "slice_batch_size"), [("majority", None), ("mean", 3)])
def test_slice_vote_model_runs_every_slice_of_each_volume(method: str, slice_batch_size: int | None) -> None:
    model2d = _toy_2d()
    wrapper = SliceVoteModel(model2d, method, slice_batch_size=slice_batch_size)  # type: ignore[arg-type]
    x = torch.randn(2, 2, 5, 8, 8)  # (B, C, D, H, W)
    with torch.no_grad():
        out = wrapper(x)
        expected = torch.stack(
            [aggregate_slices(model2d(x[b].transpose(0, 1)), method) for b in range(2)]  # type: ignore[arg-type]
        )
    assert out.shape == (2, 3)
    assert torch.allclose(out.softmax(dim=1), expected, atol=1e-6)
    assert wrapper.gradcam_layer == "model.layer4"


def test_slice_vote_model_wraps_resnet50_2d_and_rejects_slices() -> None:
    wrapper = SliceVoteModel(create_model("resnet50_2d")).eval()
    with torch.no_grad():
        assert torch.isfinite(wrapper(torch.randn(1, 1, 3, 32, 32))).all()
    with pytest.raises(ModelArgumentError, match=r"\(B, C, D, H, W\)"):
        wrapper(torch.randn(1, 1, 32, 32))
