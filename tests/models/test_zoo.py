"""Every registered model: output shape, gradients, metadata, parameter counts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ctcovid.models import create_model, list_models, model_info

# (3 input channels, 3 classes) counts of MONAI's resnetXX(spatial_dims=3, conv1_t_size=7,
# shortcut_type="A" for 10/18/34 else "B", bias_downsample=False); CT-S bodies are ResNet-50/101/152.
EXPECTED_PARAMETERS = {
    "r3d_10": 14_227_139,
    "r3d_18": 33_031_619,
    "r3d_34": 63_341_251,
    "r3d_50": 46_205_123,
    "r3d_101": 85_251_267,
    "r3d_152": 117_409_987,
    "r3d_200": 126_609_603,
    "ct_s50": 46_205_123,
    "ct_s100": 85_251_267,
    "ct_s152": 117_409_987,
}


def _tiny_input(name: str, batch: int = 2) -> torch.Tensor:
    spec = model_info(name).default_input
    size = (4, 32, 32) if spec.spatial_dims == 3 else (32, 32)
    return torch.randn(batch, spec.in_channels, *size, generator=torch.Generator().manual_seed(0))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Run:
    name: str
    model: nn.Module
    logits: torch.Tensor


@pytest.fixture(scope="module", params=list_models())
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Each model built once, one training-mode forward and backward on a tiny input.

    Module scope: pytest groups the tests by model, so only one network is alive at a time
    (the big ones hold ~0.5 GB of weights) and the costly part runs once per model.
    """
    torch.manual_seed(0)
    model = create_model(request.param).train()
    logits = model(_tiny_input(request.param))
    logits.logsumexp(dim=1).sum().backward()
    yield Run(request.param, model, logits.detach())


def test_registry_lists_every_family() -> None:
    names = set(list_models())
    assert {"r3d_18", "r3d_200", "r2plus1d_18", "r2plus1d_34", "ct_s50", "ct_s152", "resnet50_2d"} <= names


def test_output_is_finite_logits_per_class(run: Run) -> None:
    assert run.logits.shape == (2, 3)
    assert torch.isfinite(run.logits).all()


def test_every_parameter_gets_a_finite_gradient(run: Run) -> None:
    params = list(run.model.named_parameters())
    no_grad = [n for n, p in params if p.grad is None]
    not_finite = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{run.name}: no gradient for {no_grad[:5]}"
    assert not not_finite, f"{run.name}: non-finite gradient for {not_finite[:5]}"
    assert any(p.grad is not None and p.grad.any() for n, p in params if n.startswith("stem.")), (
        "stem got zeros"
    )


def test_metadata_matches_the_model(run: Run) -> None:
    model, info = run.model, model_info(run.name)
    assert model.get_submodule(info.gradcam_layer) is model.get_submodule(model.gradcam_layer)  # type: ignore[arg-type]
    assert model.in_channels == info.default_input.in_channels
    assert model.spatial_dims == info.default_input.spatial_dims


def test_every_builder_takes_the_common_arguments() -> None:
    for name in list_models():
        assert {"in_channels", "num_classes", "dropout"} <= set(model_info(name).arguments), name


def test_builder_docstring_cites_its_paper() -> None:
    for name in list_models():
        doc = model_info(name).builder.__doc__ or ""
        assert re.search(r"et al\. \d{4}", doc), f"{name}: docstring should cite its paper"


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_count_matches_monai(name: str) -> None:
    with torch.device("meta"):  # shapes only: counting a 100M-parameter net costs nothing
        model = create_model(name, in_channels=3, num_classes=3)
    assert _count(model) == EXPECTED_PARAMETERS[name]


def test_resnet50_2d_has_torchvision_parameter_count() -> None:
    with torch.device("meta"):
        model = create_model("resnet50_2d", in_channels=3, num_classes=1000)
    assert _count(model) == 25_557_032  # torchvision.models.resnet50()


def test_wrong_input_shape_is_reported_with_the_expected_layout() -> None:
    model = create_model("r3d_10", in_channels=1)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\) with C=1, got shape \(1, 3, 4, 32, 32\)"):
        model(torch.zeros(1, 3, 4, 32, 32))
