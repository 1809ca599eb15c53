"""COVID-Net CT-S (Aboutalebi et al. 2021): block counts, dropout, severity head."""

from __future__ import annotations

import pytest
import torch

from ctcovid.models import create_model, model_info
from ctcovid.models.blocks import Bottleneck
from ctcovid.models.ct_s import CovidNetCTS


@pytest.mark.parametrize(("name", "blocks"), [("ct_s50", 16), ("ct_s100", 33), ("ct_s152", 50)])
def test_residual_block_counts_follow_the_paper(name: str, blocks: int) -> None:
    with torch.device("meta"):
        model = create_model(name)
    assert isinstance(model, CovidNetCTS)
    assert sum(isinstance(m, Bottleneck) for m in model.modules()) == blocks


def test_defaults_are_one_channel_three_severities_with_dropout() -> None:
    with torch.device("meta"):
        model = create_model("ct_s50")
    assert model.in_channels == 1 and model.fc.out_features == 3
    assert model.dropout.p == 0.5
    assert model_info("ct_s50").default_input.size[0] == 40  # the paper's uniformised depth


def test_returns_logits_not_probabilities() -> None:
    model = create_model("ct_s50").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 4, 32, 32) * 10)
    assert not torch.allclose(out.sum(dim=1), torch.ones(2))
