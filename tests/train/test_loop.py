from __future__ import annotations

import torch
from torch import nn

from ctcovid.train.loop import StepOptions, train_one_epoch


class _NaNLoss(nn.Module):
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.sum() * float("nan")


def test_non_finite_loss_skips_the_step_and_keeps_weights() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    batches = [(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), {}) for _ in range(3)]
    stats = train_one_epoch(model, batches, opt, _NaNLoss(), StepOptions(torch.device("cpu")))
    assert stats.bad_steps == 3
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_gradient_accumulation_equals_one_big_batch() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    loss = nn.CrossEntropyLoss()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    train_one_epoch(a, [(x, y, {})], opt_a, loss, StepOptions(torch.device("cpu")))
    train_one_epoch(b, [(x[:4], y[:4], {}), (x[4:], y[4:], {})], opt_b, loss,
                    StepOptions(torch.device("cpu"), grad_accum=2))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
