"""R(2+1)D networks (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action
Recognition", CVPR 2018; arXiv:1711.11248), compared against 3D ResNets in the diagnosis paper
(Table 7: "ResNet-18(2+1)D", "ResNet-34(2+1)D").

Every t x d x d convolution of a 3D ResNet becomes a 1 x d x d spatial convolution into ``M``
channels, BN, ReLU, then a t x 1 x 1 convolution along depth. ``M`` is chosen so the factored
pair has (about) the parameters of the full convolution (Tran et al., Sec. 3.5):

    M = floor(t * d^2 * N_in * N_out / (d^2 * N_in + t * N_out))

The residual blocks are the shared ones of :mod:`.blocks` with this convolution injected. Unlike
torchvision (which reuses the first convolution's ``M`` for the second of a block), ``M`` is
computed for each convolution from its own ``N_in`` and ``N_out``, as the formula reads; block
counts therefore differ slightly from torchvision's ``r2plus1d_18``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ctcovid.models.blocks import BasicBlock, HeadType, ResNet, ShortcutType
from ctcovid.models.registry import register_model

__all__ = ["Conv2Plus1d", "R2Plus1dStem", "mid_channels", "r2plus1d", "r2plus1d_18", "r2plus1d_34"]


def mid_channels(in_channels: int, out_channels: int, *, t: int = 3, d: int = 3) -> int:
    """Width ``M`` of a (2+1)D convolution matching a full ``t x d x d`` one in parameters."""
    return (t * d * d * in_channels * out_channels) // (d * d * in_channels + t * out_channels)


class Conv2Plus1d(nn.Sequential):
    """A 3x3x3 convolution factored into 1x3x3 (spatial) -> BN -> ReLU -> 3x1x1 (depth).

    The stride is split the same way: ``(1, s, s)`` on the spatial part, ``(s, 1, 1)`` on the
    depth part. The caller adds the BN + ReLU that follow the whole (2+1)D convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        mid = mid_channels(in_channels, out_channels)
        super().__init__(
            OrderedDict(
                spatial=nn.Conv3d(
                    in_channels, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
                ),
                bn=nn.BatchNorm3d(mid),
                relu=nn.ReLU(inplace=True),
                depth=nn.Conv3d(
                    mid, out_channels, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False
                ),
            )
        )


class R2Plus1dStem(nn.Sequential):
    """Factored stem: 1x7x7 conv (stride 1x2x2) to 45 channels, BN, ReLU, 3x1x1 conv to 64, BN, ReLU.

    45 is the stem width of Tran et al.'s released R(2+1)D models (torchvision's
    ``R2Plus1dStem`` keeps it), not the parameter-matching ``M`` (83 for a 3-channel 3x7x7
    convolution): the stem is cheap either way and this keeps the published shape.
    No max-pool, as in Tran et al.
    """

    def __init__(self, in_channels: int, out_channels: int = 64, mid: int = 45) -> None:
        super().__init__(
            OrderedDict(
                spatial=nn.Conv3d(
                    in_channels, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
                ),
                bn_spatial=nn.BatchNorm3d(mid),
                relu_spatial=nn.ReLU(inplace=True),
                depth=nn.Conv3d(mid, out_channels, (3, 1, 1), padding=(1, 0, 0), bias=False),
                bn=nn.BatchNorm3d(out_channels),
                relu=nn.ReLU(inplace=True),
            )
        )


def r2plus1d(
    layers: Sequence[int],
    *,
    in_channels: int,
    num_classes: int,
    dropout: float,
    shortcut: ShortcutType,
    head: HeadType = "linear",
) -> ResNet:
    """An R(2+1)D network with basic blocks; ``layers`` blocks per stage."""
    return ResNet(
        block=BasicBlock,
        layers=layers,
        stem=R2Plus1dStem,
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        spatial_dims=3,
        conv=Conv2Plus1d,
        shortcut=shortcut,
        head=head,
    )


@register_model
def r2plus1d_18(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "B",
    head: HeadType = "linear",
) -> ResNet:
    """R(2+1)D-18 (Tran et al. 2018), basic blocks [2, 2, 2, 2]; diagnosis paper Table 7.

    Projection shortcuts (type B) by default, as in Tran et al. and torchvision.
    """
    return r2plus1d(
        [2, 2, 2, 2],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        head=head,
    )


@register_model
def r2plus1d_34(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.0,
    shortcut: ShortcutType = "B",
    head: HeadType = "linear",
) -> ResNet:
    """R(2+1)D-34 (Tran et al. 2018), basic blocks [3, 4, 6, 3]; diagnosis paper Table 7."""
    return r2plus1d(
        [3, 4, 6, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        shortcut=shortcut,
        head=head,
    )
