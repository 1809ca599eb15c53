"""3D ResNets of Hara et al. (2018; cited as 2017), as used for COVID-19 / pneumonia / normal CT diagnosis.

Architecture of Table 3 of Li, Pei & Guo, "A 3D CNN Classification Model for Accurate
Diagnosis of Coronavirus Disease 2019 using Computed Tomography Images" (medRxiv
10.1101/2021.01.21.21249999, 2021; "the diagnosis paper" below), itself taken from "Can
Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and ImageNet?" (Hara, Kataoka & Satoh,
CVPR 2018; arXiv:1711.09577):

* conv1 7x7x7, 64 channels, stride 1 in depth and 2 in height/width; BN; ReLU;
* 3x3x3 max-pool, stride 2;
* four stages of 64/128/256/512-wide blocks, stages 2-4 downsampling by 2 in their first block;
  basic blocks with zero-padding shortcuts (type A) for 10/18/34 layers, bottlenecks with
  projection shortcuts (type B) for 50/101/152/200;
* global average pool, (dropout), fully connected.

Parameter counts equal MONAI's ``resnetXX(spatial_dims=3, conv1_t_size=7, shortcut_type=...,
bias_downsample=False)`` and checkpoints of MONAI, MedicalNet and Hara's code load with
:func:`ctcovid.models.weights.load_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ctcovid.models.blocks import BasicBlock, Bottleneck, HeadType, ResNet, ResNetStem, ShortcutType
from ctcovid.models.registry import ModelArgumentError, register_model

__all__ = [
    "ResNet3d",
    "r3d_10",
    "r3d_18",
    "r3d_34",
    "r3d_50",
    "r3d_101",
    "r3d_152",
    "r3d_200",
]


class ResNet3d(ResNet):
    """3D ResNet on ``(B, C, D, H, W)`` with Hara's stem; see the module docstring.

    Args:
        block: :class:`~.blocks.BasicBlock` or :class:`~.blocks.Bottleneck`.
        layers: Blocks per stage.
        in_channels: Input channels (1 for a HU-windowed CT volume).
        num_classes: Number of classes.
        dropout: Dropout before the classifier.
        shortcut: "A" (zero padding) or "B" (1x1x1 projection) where a block changes shape.
        conv1_depth_kernel: Depth extent of the 7x7 first convolution (Hara/MONAI
            ``conv1_t_size``); 7 in Table 3.
        conv1_depth_stride: Depth stride of the first convolution (``conv1_t_stride``); 1 in
            Table 3 so thin stacks of slices (the paper's best used depth 4) keep their depth.
        max_pool: Whether the stem ends with the 3x3x3 stride-2 max-pool (Table 3: yes).
        head: ``"linear"`` logits or ``"corn"`` ordinal log-probabilities (see
            :class:`~.blocks.ResNet`).
    """

    def __init__(
        self,
        *,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
        shortcut: ShortcutType = "A",
        conv1_depth_kernel: int = 7,
        conv1_depth_stride: int = 1,
        max_pool: bool = True,
        head: HeadType = "linear",
    ) -> None:
        for name, value in (
            ("conv1_depth_kernel", conv1_depth_kernel),
            ("conv1_depth_stride", conv1_depth_stride),
        ):
            if not isinstance(value, int) or value < 1:
                raise ModelArgumentError(f"{name} must be a positive integer, got {value!r}")
        if conv1_depth_kernel % 2 == 0:
            # An even kernel cannot be padded symmetrically ("same" size), so the depth would shift.
            raise ModelArgumentError(f"conv1_depth_kernel must be odd, got {conv1_depth_kernel}")
        stem = partial(
            ResNetStem,
            out_channels=64,
            kernel_size=(conv1_depth_kernel, 7, 7),
            stride=(conv1_depth_stride, 2, 2),
            max_pool=max_pool,
        )
        super().__init__(
            block=block,
            layers=layers,
            stem=stem,
            in_channels=in_channels,
            num_classes=num_classes,
            dropout=dropout,
            spatial_dims=3,
            shortcut=shortcut,
            head=head,
        )


def _basic(layers: Sequence[int], **kwargs: object) -> ResNet3d:
    return ResNet3d(block=BasicBlock, layers=layers, **kwargs)  # type: ignore[arg-type]


def _bottleneck(layers: Sequence[int], **kwargs: object) -> ResNet3d:
    return ResNet3d(block=Bottleneck, layers=layers, **kwargs)  # type: ignore[arg-type]


@register_model
def r3d_10(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "A",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-10 (Hara et al. 2018), basic blocks [1, 1, 1, 1]."""
    return _basic(
        [1, 1, 1, 1],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )


@register_model
def r3d_18(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "A",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-18 (Hara et al. 2018), basic blocks [2, 2, 2, 2]: the diagnosis paper's best (Tables 3, 7)."""
    return _basic(
        [2, 2, 2, 2],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )


@register_model
def r3d_34(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "A",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-34 (Hara et al. 2018), basic blocks [3, 4, 6, 3]; diagnosis paper Table 3."""
    return _basic(
        [3, 4, 6, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )


@register_model
def r3d_50(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "B",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-50 (Hara et al. 2018), bottlenecks [3, 4, 6, 3]; diagnosis paper Table 3."""
    return _bottleneck(
        [3, 4, 6, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )


@register_model
def r3d_101(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "B",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-101 (Hara et al. 2018), bottlenecks [3, 4, 23, 3]."""
    return _bottleneck(
        [3, 4, 23, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )


@register_model
def r3d_152(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "B",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-152 (Hara et al. 2018), bottlenecks [3, 8, 36, 3]."""
    return _bottleneck(
        [3, 8, 36, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )


@register_model
def r3d_200(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "B",
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    max_pool: bool = True,
    head: HeadType = "linear",
) -> ResNet3d:
    """3D ResNet-200 (Hara et al. 2018), bottlenecks [3, 24, 36, 3]."""
    return _bottleneck(
        [3, 24, 36, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        max_pool=max_pool,
        head=head,
    )
