"""resnet50_2d_slices: the severity paper's 2D baseline as a (B, C, D, H, W) model.

(Kept with the evaluation tests because the sweep's slice-vote run depends on it; it belongs in
tests/models/ and the model zoo tests already cover it through list_models().)
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from ctcovid.models import ModelArgumentError, ResNet, create_model
from ctcovid.models.blocks import BasicBlock, ResNetStem
from ctcovid.models.slice_baseline import SliceResNet


def _small(cls: type[ResNet], **extra: object) -> ResNet:
    """A narrow 4-block ResNet: SliceResNet's slicing logic does not depend on the depth."""
    return cls(
        block=BasicBlock,
        layers=[1, 1, 1, 1],
        widths=(8, 8, 8, 8),
        stem_channels=8,
        stem=partial(ResNetStem, out_channels=8, kernel_size=(7, 7), stride=(2, 2)),
        in_channels=1,
        num_classes=3,
        **extra,  # type: ignore[arg-type]
    ).eval()


@pytest.fixture(scope="module")
def nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    slices = _small(SliceResNet)
    plain = _small(ResNet, spatial_dims=2)
    plain.load_state_dict(slices.state_dict())  # same layers, same keys
    return slices, plain


def test_the_registered_builder_is_resnet50_with_resnet50_2d_weights() -> None:
    with torch.device("meta"):
        a = create_model("resnet50_2d_slices", in_channels=3, num_classes=1000)
        b = create_model("resnet50_2d", in_channels=3, num_classes=1000)
    assert isinstance(a, SliceResNet)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_per_slice_logits_and_their_mean_over_depth(nets: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    slices, plain = nets
    x = torch.randn(2, 1, 3, 16, 16)
    flat = x.transpose(1, 2).reshape(6, 1, 16, 16)  # every call below runs 6 slices: one warm-up
    with torch.no_grad():
        per_slice = plain(flat)  # (B * D, K)
        # One-slice chunks (chunk_depth = 1): exactly the plain 2D classifier of that slice.
        torch.testing.assert_close(slices(flat.unsqueeze(2)), per_slice, rtol=1e-4, atol=1e-5)
        # Several slices: the mean of their logits.
        torch.testing.assert_close(slices(x), per_slice.reshape(2, 3, 3).mean(1), rtol=1e-4, atol=1e-5)


def test_a_slice_batch_is_refused_with_the_expected_layout(
    nets: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    with pytest.raises(
        ModelArgumentError, match=r"expects input \(B, C, D, H, W\) with C=1, got shape \(2, 1, 16, 16\)"
    ):
        nets[0](torch.zeros(2, 1, 16, 16))
