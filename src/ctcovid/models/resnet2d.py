"""The 2D slice baseline of the severity paper: a 2D ResNet-50 per slice, then a vote per volume.

COVID-Net CT-S (Aboutalebi et al. 2021, Sec. 3) compares its 3D networks with "a 50 layer
residual network architecture comprised of 2D convolutions ... making predictions on all slices
within a patient volume and performing majority vote on the predictions" (59.0% accuracy against
78.5% for CT-S152, Table 1). Here:

* :func:`resnet50_2d` is He et al.'s ResNet-50 (CVPR 2016; torchvision layout, stride on the 3x3
  convolution) built from the same blocks as the 3D family with ``spatial_dims=2``;
* :func:`aggregate_slices` turns per-slice logits into one answer per volume (majority vote, or
  mean probability);
* :class:`SliceVoteModel` wraps a 2D network so it takes ``(B, C, D, H, W)`` volumes like the 3D
  models and returns per-volume logits.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ctcovid.models.blocks import Bottleneck, HeadType, ResNet, ResNetStem
from ctcovid.models.registry import InputSpec, ModelArgumentError, register_model

__all__ = ["AggregationMethod", "SliceVoteModel", "aggregate_slices", "resnet50_2d"]

AggregationMethod = Literal["majority", "mean"]
_METHODS = ("majority", "mean")


@register_model(default_input=InputSpec(in_channels=1, size=(128, 128)))
def resnet50_2d(
    *, in_channels: int = 1, num_classes: int = 3, dropout: float = 0.0, head: HeadType = "linear"
) -> ResNet:
    """2D ResNet-50 (He et al. 2016) on single slices ``(B, C, H, W)``: the severity paper's baseline.

    7x7 stride-2 stem, 3x3 max-pool, bottlenecks [3, 4, 6, 3] with projection shortcuts; with
    ``in_channels=3, num_classes=1000`` it has torchvision's ``resnet50`` parameter count.
    """
    return ResNet(
        block=Bottleneck,
        layers=[3, 4, 6, 3],
        stem=partial(ResNetStem, out_channels=64, kernel_size=(7, 7), stride=(2, 2)),
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        spatial_dims=2,
        shortcut="B",
        head=head,
    )


def aggregate_slices(logits_per_slice: torch.Tensor, method: AggregationMethod = "majority") -> torch.Tensor:
    """Combine per-slice logits into per-volume class probabilities.

    Args:
        logits_per_slice: ``(B, D, K)`` logits of D slices of each of B volumes, or ``(D, K)``
            for a single volume.
        method: ``"mean"``: the mean over slices of the softmax probabilities.
            ``"majority"``: each slice votes for its argmax; the result is the vote share,
            with ties between classes broken by their mean probability. The tie-break is folded
            into the returned probabilities as ``(votes_k + 0.5 * mean_prob_k) / (D + 0.5)``:
            half a vote at most, so it never outweighs a real vote but decides between
            classes with equal votes, and ``argmax`` of the result is the majority decision.

    Returns:
        ``(B, K)`` (or ``(K,)``) float32 probabilities; each row sums to 1.

    Raises:
        ModelArgumentError: For an unknown ``method`` or a tensor that is not 2D or 3D.
    """
    if method not in _METHODS:
        raise ModelArgumentError(f"unknown aggregation method {method!r}; use one of {', '.join(_METHODS)}")
    if logits_per_slice.ndim not in (2, 3) or logits_per_slice.shape[-2] == 0:
        raise ModelArgumentError(
            "logits_per_slice must be (B, D, K) or (D, K) with at least one slice, "
            f"got shape {tuple(logits_per_slice.shape)}"
        )
    probs = logits_per_slice.float().softmax(dim=-1)  # (..., D, K)
    mean_prob = probs.mean(dim=-2)  # (..., K)
    if method == "mean":
        return mean_prob
    n_slices, n_classes = probs.shape[-2:]
    votes = F.one_hot(probs.argmax(dim=-1), n_classes).sum(dim=-2)  # (..., K) integer counts
    # float64 so that a tie-break by a small difference in mean probability survives next to
    # vote counts in the hundreds.
    score = (votes.double() + 0.5 * mean_prob.double()) / (n_slices + 0.5)
    return score.float()


class SliceVoteModel(nn.Module):
    """Run a 2D network on every slice of a volume and aggregate its answers per volume.

    Takes ``(B, C, D, H, W)`` like the 3D models and returns ``(B, K)`` logits: the logarithm of
    :func:`aggregate_slices`' probabilities, so ``softmax`` of the output gives those
    probabilities back and evaluation code treats this model like any other. Train the 2D
    network on slices (its own ``(B, C, H, W)`` input); this wrapper is for volume-level
    evaluation and prediction.

    Args:
        model2d: A 2D classifier taking ``(N, C, H, W)`` and returning ``(N, K)`` logits.
        method: ``"majority"`` (the severity paper's vote) or ``"mean"`` probability.
        slice_batch_size: Run at most this many slices through ``model2d`` at once, to bound
            memory on long volumes; ``None`` runs all slices of the batch together.
    """

    def __init__(
        self,
        model2d: nn.Module,
        method: AggregationMethod = "majority",
        *,
        slice_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if method not in _METHODS:
            raise ModelArgumentError(
                f"unknown aggregation method {method!r}; use one of {', '.join(_METHODS)}"
            )
        if slice_batch_size is not None and slice_batch_size < 1:
            raise ModelArgumentError(
                f"slice_batch_size must be a positive integer or None, got {slice_batch_size!r}"
            )
        self.model = model2d
        self.method: AggregationMethod = method
        self.slice_batch_size = slice_batch_size
        # Grad-CAM hooks the 2D network's layer; its maps come per slice, (B * D, C', h, w).
        self.gradcam_layer = "model." + str(getattr(model2d, "gradcam_layer", "layer4"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ModelArgumentError(
                f"SliceVoteModel expects volumes (B, C, D, H, W), got shape {tuple(x.shape)}"
            )
        b, c, d, h, w = x.shape
        slices = x.transpose(1, 2).reshape(b * d, c, h, w)  # (B * D, C, H, W), volume-major
        if self.slice_batch_size is None:
            logits = self.model(slices)  # (B * D, K)
        else:
            logits = torch.cat([self.model(chunk) for chunk in slices.split(self.slice_batch_size)])
        probs = aggregate_slices(logits.reshape(b, d, -1), self.method)  # (B, K)
        # A class with no votes and underflowed probability would give log(0) = -inf.
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()  # (B, K) logits
