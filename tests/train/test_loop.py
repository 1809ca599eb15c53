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
    train_one_epoch(
        b,
        [(x[:4], y[:4], {}), (x[4:], y[4:], {})],
        opt_b,
        loss,
        StepOptions(torch.device("cpu"), grad_accum=2),
    )
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_precise_bn_replaces_stale_running_stats_with_the_data_statistics() -> None:
    from ctcovid.train.loop import recompute_bn_stats

    torch.manual_seed(0)
    bn = nn.BatchNorm3d(2)
    bn.running_mean.fill_(50.0)  # stale, as after fast early training
    bn.eval()
    data = [torch.randn(4, 2, 3, 4, 4) * 2 + 3 for _ in range(5)]
    n = recompute_bn_stats(bn, [(x, torch.zeros(4), {}) for x in data], StepOptions(torch.device("cpu")), 3)
    assert n == 3 and not bn.training and bn.momentum == 0.1
    batch_means = torch.stack([x.mean(dim=(0, 2, 3, 4)) for x in data[:3]])
    torch.testing.assert_close(bn.running_mean, batch_means.mean(0))
