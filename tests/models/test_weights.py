"""Weight import: MONAI parity, Hara/MedicalNet key layouts, head and channel handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ctcovid.models import WeightLoadError, create_model, load_pretrained


def _tiny(in_channels: int = 3) -> torch.Tensor:
    return torch.randn(2, in_channels, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def _randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Give BatchNorms non-trivial statistics so parity also checks their mapping."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _monai(depth: int, **kwargs: object) -> nn.Module:
    resnet = pytest.importorskip("monai.networks.nets.resnet")
    shortcut = "A" if depth in (10, 18, 34) else "B"
    options = {"bias_downsample": False, **kwargs}
    model = getattr(resnet, f"resnet{depth}")(
        spatial_dims=3,
        n_input_channels=3,
        num_classes=3,
        shortcut_type=shortcut,
        conv1_t_size=7,
        conv1_t_stride=(1, 2, 2),
        **options,
    )
    with torch.no_grad():
        _randomize_bn(model)
    return model.eval()


@pytest.mark.parametrize("depth", [18, 50])
def test_monai_weights_give_the_same_logits(depth: int) -> None:
    theirs = _monai(depth)
    ours = create_model(f"r3d_{depth}", in_channels=3, num_classes=3).eval()
    report = load_pretrained(ours, theirs.state_dict(), source="monai")
    assert not report.missing and not report.unexpected and not report.skipped
    x = _tiny()
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff <= 1e-5


def test_monai_projection_bias_is_folded_into_batchnorm() -> None:
    theirs = _monai(50, bias_downsample=True)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, nn.Conv3d) and m.bias is not None:
                m.bias.normal_(0.0, 0.5)
    ours = create_model("r3d_50", in_channels=3, num_classes=3).eval()
    report = load_pretrained(ours, theirs.state_dict())
    assert report.source == "monai"
    assert len(report.adapted) == 4  # one projection per stage
    x = _tiny()
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5


def _hara_checkpoint(model: nn.Module) -> dict[str, object]:
    """A state dict laid out like kenshohara/3D-ResNets-PyTorch's (DataParallel, nested)."""
    renames = {
        "stem.conv.": "conv1.",
        "stem.bn.": "bn1.",
        ".shortcut.conv.": ".downsample.0.",
        ".shortcut.bn.": ".downsample.1.",
    }
    state = {}
    for key, value in model.state_dict().items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        state["module." + key] = value.clone()
    return {"arch": "resnet-50", "epoch": 200, "state_dict": state}


def test_hara_checkpoint_file_loads_with_prefix_and_nesting(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("r3d_50", in_channels=3, num_classes=3).eval()
    with torch.no_grad():
        _randomize_bn(source)
    path = tmp_path / "r3d50_K_200ep.pth"
    torch.save(_hara_checkpoint(source), path)
    target = create_model("r3d_50", in_channels=3, num_classes=3).eval()
    report = load_pretrained(target, path)
    assert report.source == "hara"
    assert not report.missing and not report.unexpected
    x = _tiny()
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_classifier_of_other_size_is_skipped_and_kept() -> None:
    source = create_model("r3d_18", in_channels=3, num_classes=400)
    target = create_model("r3d_18", in_channels=3, num_classes=3)
    head_before = target.fc.weight.clone()
    report = load_pretrained(target, _hara_checkpoint(source))
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(target.fc.weight, head_before)
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_medicalnet_segmentation_head_is_dropped_and_channels_summed() -> None:
    source = create_model("r3d_10", in_channels=3, num_classes=3, shortcut="B")
    state = _hara_checkpoint(source)["state_dict"]
    assert isinstance(state, dict)
    state = {k: v for k, v in state.items() if ".fc." not in k}  # MedicalNet has no classifier
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512, 2, 2, 2)
    target = create_model("r3d_10", in_channels=1, num_classes=3, shortcut="B")
    report = load_pretrained(target, {"state_dict": state})
    assert report.source == "medicalnet"
    assert "conv_seg.0.weight" in report.skipped
    assert set(report.missing) == {"fc.weight", "fc.bias"}
    assert report.adapted == ("stem.conv.weight",)
    expected = source.stem.conv.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(target.stem.conv.weight, expected)


def test_shortcut_type_mismatch_names_the_fix() -> None:
    source = create_model("r3d_18", in_channels=3, num_classes=3, shortcut="B")
    target = create_model("r3d_18", in_channels=3, num_classes=3)  # type A
    with pytest.raises(WeightLoadError, match=r"downsample.*shortcut='B'"):
        load_pretrained(target, _hara_checkpoint(source))
    report = load_pretrained(target, _hara_checkpoint(source), strict=False)
    assert report.unexpected and all(".downsample." in k for k in report.unexpected)


def test_missing_file_and_unknown_layout_raise_clear_errors(tmp_path: Path) -> None:
    model = create_model("r3d_10")
    with pytest.raises(WeightLoadError, match="does not exist"):
        load_pretrained(model, tmp_path / "nope.pth")
    with pytest.raises(WeightLoadError, match="cannot tell"):
        load_pretrained(model, {"stem.0.weight": torch.zeros(1)})
    with pytest.raises(WeightLoadError, match="unknown weight source"):
        load_pretrained(model, {}, source="timm")  # type: ignore[arg-type]


def test_first_conv_kernel_mismatch_names_the_option() -> None:
    source = create_model("r3d_10", in_channels=3, conv1_depth_kernel=3)
    target = create_model("r3d_10", in_channels=3)
    with pytest.raises(
        WeightLoadError, match=r"stem\.conv\.weight: checkpoint \(64, 3, 3, 7, 7\).*conv1_depth_kernel"
    ):
        load_pretrained(target, _hara_checkpoint(source))


def test_resnet_weights_do_not_go_into_r2plus1d() -> None:
    source = create_model("r3d_18", in_channels=3)
    with pytest.raises(WeightLoadError, match="no Hara-style stem"):
        load_pretrained(create_model("r2plus1d_18"), _hara_checkpoint(source))


def test_own_checkpoint_reloads_into_a_new_head() -> None:
    source = create_model("r2plus1d_18", num_classes=3)
    target = create_model("r2plus1d_18", num_classes=2)
    report = load_pretrained(target, {"state_dict": source.state_dict()})
    assert report.source == "ctcovid" and set(report.skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(target.layer1[0].conv1.spatial.weight, source.layer1[0].conv1.spatial.weight)
