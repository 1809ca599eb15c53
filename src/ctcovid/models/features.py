"""Logits and pooled features in one forward pass (for out-of-distribution scores).

Every network here ends in global average pooling (``model.pool``), then dropout and the head. A
forward hook on the pool gives the ``(B, num_features)`` vector the head sees, without a second
pass and without each family exposing another method.
"""

from __future__ import annotations

import threading

import torch
from torch import nn


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, features)`` of ``x``; features are the pooled vector before dropout and head.

    Features are None for a module without a ``pool`` (a user's own network): no feature-space
    score then, the rest works.
    """
    pool = getattr(model, "pool", None)
    if not isinstance(pool, nn.Module):
        return model(x), None
    seen: list[torch.Tensor] = []
    me = threading.get_ident()

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        # Hooks are per module, not per thread: a server running this model in another thread
        # fires it too, so keep only this thread's call.
        if threading.get_ident() == me:
            seen.append(out)

    handle = pool.register_forward_hook(keep)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise TypeError(f"{type(model).__name__}.pool ran {len(seen)} times in one forward; expected once")
    return logits, seen[0].flatten(1)


def enable_dropout(model: nn.Module, enabled: bool = True) -> int:
    """Put only the dropout layers in train mode (MC dropout); BatchNorm stays in eval. Returns their count."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            m.train(enabled)
            n += 1
    return n


def mc_head_samples(model: nn.Module, features: torch.Tensor, n: int) -> torch.Tensor | None:
    """``n`` MC-dropout outputs ``(n, B, K)`` from pooled ``features``, or None when not applicable.

    In the ResNet family the only dropout sits between the pool and the head
    (``pool -> dropout -> fc -> head_output``), so a stochastic pass differs from the deterministic
    one only after the pool: sampling the dropout mask on the features gives exactly the outputs of
    ``n`` full passes with dropout on, for the cost of ``n`` small matrix products (measured in
    bench/RESULTS.md). Any other layout (dropout elsewhere, a user's network) returns None and the
    caller runs full passes.
    """
    drop, fc = getattr(model, "dropout", None), getattr(model, "fc", None)
    active = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not (isinstance(drop, nn.Dropout) and active == [drop] and isinstance(fc, nn.Linear)):
        return None
    head = getattr(model, "head_output", lambda z: z)
    outs = [head(fc(nn.functional.dropout(features, drop.p, training=True))) for _ in range(n)]
    return torch.stack(outs)
