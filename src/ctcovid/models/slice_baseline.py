"""The severity paper's 2D baseline as a volume model: a 2D ResNet-50 applied slice by slice.

COVID-Net CT-S (Aboutalebi et al. 2021, Table 1) compares its 3D networks with a 2D ResNet-50
that classifies every slice, the volume's answer being the majority vote of its slices.
:func:`resnet50_2d_slices` makes that baseline trainable with the same data path as the 3D
models: it takes ``(B, C, D, H, W)`` like them, runs the 2D network on each of the ``D`` slices
and returns their mean logits. Trained with ``preprocess.depth_mode = "stack"`` and
``chunk_depth = 1`` every sample is one slice (``D = 1``), so it is exactly a per-slice 2D
classifier; the vote per scan happens in evaluation (``ctcovid evaluate --aggregate majority``,
or ``"evaluate.aggregate" = "majority"`` in a sweep).

The weights are those of ``resnet50_2d`` (same state-dict keys), so torchvision or 2D ResNet-50
checkpoints load into it with :func:`~ctcovid.models.load_pretrained`.
"""

from __future__ import annotations

from functools import partial

import torch

from ctcovid.models.blocks import Bottleneck, HeadType, ResNet, ResNetStem
from ctcovid.models.registry import InputSpec, ModelArgumentError, register_model

__all__ = ["SliceResNet", "resnet50_2d_slices"]


class SliceResNet(ResNet):
    """A 2D :class:`~ctcovid.models.blocks.ResNet` taking volumes ``(B, C, D, H, W)``, one slice at a time.

    ``spatial_dims`` is 3 because that is the input layout; the convolutions are 2D.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(spatial_dims=2, **kwargs)  # type: ignore[arg-type]
        self.spatial_dims = 3  # the layout forward() takes; _check_input reads it

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice feature maps ``(B * D, num_features, H/32, W/32)``, volume-major."""
        self._check_input(x)
        b, c, d, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * d, c, h, w)  # (B * D, C, H, W)
        x = self.stem(x)  # (B * D, 64, H/4, W/4)
        x = self.layer1(x)  # (B * D, 256, H/4, W/4)
        x = self.layer2(x)  # (B * D, 512, H/8, W/8)
        x = self.layer3(x)  # (B * D, 1024, H/16, W/16)
        return self.layer4(x)  # (B * D, 2048, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ModelArgumentError(
                f"{type(self).__name__} expects input (B, C, D, H, W) with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        b, d = x.shape[0], x.shape[2]
        f = self.pool(self.forward_features(x)).flatten(1)  # (B * D, num_features)
        logits = self.fc(self.dropout(f)).reshape(b, d, -1)  # (B, D, K), or (B, D, K - 1) for CORN
        # The mean of slice logits: with D = 1 (training on slices) the slice's own logits. The
        # CORN head averages its K - 1 conditional logits, then turns them into probabilities.
        return self.head_output(logits.mean(1))  # (B, K)


@register_model(default_input=InputSpec(in_channels=1, size=(1, 128, 128)))
def resnet50_2d_slices(
    *, in_channels: int = 1, num_classes: int = 3, dropout: float = 0.0, head: HeadType = "linear"
) -> SliceResNet:
    """2D ResNet-50 (He et al. 2016) per slice of ``(B, C, D, H, W)``: the severity paper's 2D baseline.

    Same layers and weights as ``resnet50_2d``; returns the mean of the slices' logits. Train
    on one-slice chunks (``depth_mode="stack"``, ``chunk_depth=1``) and evaluate with
    ``--aggregate majority`` for the slice majority vote of Aboutalebi et al. 2021.
    """
    return SliceResNet(
        block=Bottleneck,
        layers=[3, 4, 6, 3],
        stem=partial(ResNetStem, out_channels=64, kernel_size=(7, 7), stride=(2, 2)),
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut="B",
        head=head,
    )
