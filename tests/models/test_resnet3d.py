"""3D ResNet family (Hara et al.): stem options, shortcut types, shapes."""

from __future__ import annotations

import torch

from ctcovid.models import create_model
from ctcovid.models.blocks import Bottleneck, ZeroPadShortcut


def _x(depth: int = 8, size: int = 32, channels: int = 1) -> torch.Tensor:
    return torch.randn(2, channels, depth, size, size, generator=torch.Generator().manual_seed(0))


def test_stem_keeps_depth_and_halves_height_width_then_pools() -> None:
    model = create_model("r3d_10")
    assert model.stem(_x()).shape == (2, 64, 4, 8, 8)  # conv (1, 2, 2), then max-pool 2
    assert model.stem.conv.kernel_size == (7, 7, 7)


def test_stem_options_change_depth_stride_kernel_and_pool() -> None:
    model = create_model("r3d_10", conv1_depth_kernel=3, conv1_depth_stride=2, max_pool=False)
    assert model.stem.conv.kernel_size == (3, 7, 7)
    assert model.stem(_x()).shape == (2, 64, 4, 16, 16)


def test_feature_map_strides_by_stage() -> None:
    model = create_model("r3d_18").eval()
    with torch.no_grad():
        features = model.forward_features(_x(depth=16, size=64))
    assert features.shape == (2, 512, 1, 2, 2)  # depth 16 -> 8 (pool) -> /8; H 64 -> 16 -> /8


def test_basic_blocks_use_parameter_free_zero_padding_shortcuts() -> None:
    model = create_model("r3d_18")
    shortcuts = [b.shortcut for layer in (model.layer2, model.layer3, model.layer4) for b in layer]
    assert isinstance(shortcuts[0], ZeroPadShortcut) and shortcuts[1] is None
    assert not any(".shortcut." in name for name, _ in model.named_parameters())


def test_zero_padding_shortcut_subsamples_and_pads_channels() -> None:
    x = torch.arange(2 * 3 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4, 4)
    out = ZeroPadShortcut(out_channels=5, stride=2)(x)
    assert out.shape == (2, 5, 2, 2, 2)
    assert torch.equal(out[:, :3], x[:, :, ::2, ::2, ::2])
    assert not out[:, 3:].any()


def test_bottlenecks_project_only_where_shape_changes_without_bias() -> None:
    model = create_model("r3d_50")
    assert isinstance(model.layer1[0], Bottleneck)
    projected = [name for name, m in model.named_modules() if name.endswith(".shortcut")]
    assert projected == ["layer1.0.shortcut", "layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]
    assert model.layer2[0].shortcut.conv.bias is None
    assert model.fc.in_features == 2048


def test_num_classes_and_dropout_reach_the_head() -> None:
    model = create_model("r3d_10", num_classes=5, dropout=0.25)
    assert model.fc.out_features == 5
    assert model.dropout.p == 0.25
    assert model.eval()(_x()).shape == (2, 5)


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("r3d_10", dropout=0.5).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.dropout.train()  # BatchNorm stays in eval so only dropout can vary
        assert not torch.equal(model(x), model(x))
