"""R(2+1)D (Tran et al. 2018): factored convolutions and their width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctcovid.models import create_model
from ctcovid.models.blocks import BasicBlock
from ctcovid.models.r2plus1d import Conv2Plus1d, mid_channels


@pytest.mark.parametrize(
    ("n_in", "n_out", "expected"),
    [(64, 64, 144), (64, 128, 230), (128, 128, 288), (256, 512, 921), (512, 512, 1152)],
)
def test_mid_width_follows_tran_formula(n_in: int, n_out: int, expected: int) -> None:
    # floor(t d^2 N_in N_out / (d^2 N_in + t N_out)) with t = d = 3, worked by hand.
    assert mid_channels(n_in, n_out) == expected


@pytest.mark.parametrize(("n_in", "n_out"), [(64, 64), (64, 128), (128, 256), (256, 512)])
def test_factored_conv_has_about_the_parameters_of_the_full_one(n_in: int, n_out: int) -> None:
    full = 27 * n_in * n_out
    factored = sum(m.weight.numel() for m in Conv2Plus1d(n_in, n_out) if isinstance(m, nn.Conv3d))
    # M is floored, so the pair may fall short by less than one M's worth of weights.
    assert full - (9 * n_in + 3 * n_out) < factored <= full


def test_factored_conv_splits_kernel_and_stride() -> None:
    conv = Conv2Plus1d(8, 16, stride=2)
    assert conv.spatial.kernel_size == (1, 3, 3) and conv.spatial.stride == (1, 2, 2)
    assert conv.depth.kernel_size == (3, 1, 1) and conv.depth.stride == (2, 1, 1)
    assert conv(torch.randn(1, 8, 4, 8, 8)).shape == (1, 16, 2, 4, 4)


def test_blocks_are_the_shared_ones_with_factored_convs() -> None:
    model = create_model("r2plus1d_18")
    block = model.layer2[0]
    assert type(block) is BasicBlock
    assert isinstance(block.conv1, Conv2Plus1d) and isinstance(block.conv2, Conv2Plus1d)
    assert block.conv1.spatial.out_channels == mid_channels(64, 128)
    assert block.conv2.spatial.out_channels == mid_channels(128, 128)


def test_stem_is_spatial_then_depth_without_pooling() -> None:
    model = create_model("r2plus1d_34")
    assert model.stem.spatial.kernel_size == (1, 7, 7) and model.stem.spatial.out_channels == 45
    assert model.stem.depth.kernel_size == (3, 1, 1)
    assert model.stem(torch.randn(1, 1, 4, 32, 32)).shape == (1, 64, 4, 16, 16)
