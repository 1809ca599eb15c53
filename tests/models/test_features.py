from __future__ import annotations

import pytest
import torch

from ctcovid.models import create_model
from ctcovid.models.features import enable_dropout, forward_with_features, mc_head_samples


@pytest.mark.parametrize("head", ["linear", "corn"])
def test_mc_dropout_on_the_features_equals_a_full_pass_with_dropout_on(head: str) -> None:
    torch.manual_seed(0)
    model = create_model("r3d_10", num_classes=3, dropout=0.5, head=head).eval()
    x = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():
        logits, feats = forward_with_features(model, x)
        assert feats is not None and feats.shape == (2, model.num_features)
        torch.manual_seed(7)
        fast = mc_head_samples(model, feats, 1)
        enable_dropout(model, True)
        torch.manual_seed(7)  # the same mask: dropout is the only random step of the pass
        full = model(x)
        enable_dropout(model, False)
    assert fast is not None
    torch.testing.assert_close(fast[0], full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, logits)  # dropout did act


def test_a_network_with_dropout_elsewhere_gets_no_shortcut() -> None:
    model = create_model("r3d_10", num_classes=3, dropout=0.5)
    model.layer4.append(torch.nn.Dropout3d(0.2))
    assert mc_head_samples(model, torch.randn(1, model.num_features), 2) is None
