"""Registry: names, errors for people, metadata."""

from __future__ import annotations

import pytest
from torch import nn

from ctcovid.models import (
    DuplicateModelError,
    InputSpec,
    ModelArgumentError,
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    register_model,
)
from ctcovid.models.registry import _REGISTRY


def test_unknown_name_lists_available_models_and_suggests_one() -> None:
    with pytest.raises(UnknownModelError) as excinfo:
        create_model("r3d_19")
    message = str(excinfo.value)
    assert message.startswith("unknown model 'r3d_19'")
    assert "did you mean 'r3d_18'" in message or "did you mean 'r3d_10'" in message
    assert ", ".join(list_models()) in message
    assert isinstance(excinfo.value, KeyError)


def test_duplicate_name_is_rejected_and_keeps_the_original() -> None:
    original = model_info("r3d_18").builder

    def r3d_18(*, in_channels: int = 1) -> nn.Module:
        """Impostor."""
        return nn.Identity()

    with pytest.raises(DuplicateModelError, match=r"'r3d_18' is already registered by .*resnet3d\.r3d_18"):
        register_model(r3d_18)
    assert model_info("r3d_18").builder is original


def test_unknown_keyword_is_named_with_the_valid_ones() -> None:
    with pytest.raises(
        ModelArgumentError, match=r"unknown argument\(s\) 'num_class'; valid: .*num_classes"
    ) as excinfo:
        create_model("r3d_18", num_class=2)
    assert isinstance(excinfo.value, TypeError) and isinstance(excinfo.value, ValueError)


def test_positional_builder_is_refused() -> None:
    def positional_net(in_channels: int = 1) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ModelArgumentError, match="keyword arguments only"):
        register_model(positional_net)
    assert "positional_net" not in list_models()


def test_register_with_metadata_and_pattern_listing() -> None:
    spec = InputSpec(in_channels=2, size=(8, 8))

    @register_model(name="zz_test_tiny", default_input=spec, gradcam_layer="body")
    def _tiny(*, in_channels: int = 2, num_classes: int = 3) -> nn.Module:
        """A test model (Nobody et al. 2024)."""
        return nn.Conv2d(in_channels, num_classes, 1)

    try:
        info = model_info("zz_test_tiny")
        assert info.default_input == spec and info.default_input.spatial_dims == 2
        assert info.gradcam_layer == "body"
        assert info.arguments == {"in_channels": 2, "num_classes": 3}
        assert list_models("zz_*") == ["zz_test_tiny"]
        assert isinstance(create_model("zz_test_tiny", num_classes=5), nn.Conv2d)
    finally:
        del _REGISTRY["zz_test_tiny"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"in_channels": 1.5}, "in_channels must be a positive integer, got 1.5"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"shortcut": "C"}, "shortcut must be 'A'"),
        ({"conv1_depth_kernel": 4}, "conv1_depth_kernel must be odd, got 4"),
    ],
)
def test_out_of_range_values_are_named(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ModelArgumentError, match=fragment):
        create_model("r3d_10", **kwargs)
