"""Residual building blocks shared by every ResNet-like model here, generic over ``spatial_dims``.

One set of blocks serves the 3D ResNets (:mod:`.resnet3d`), R(2+1)D (:mod:`.r2plus1d`),
COVID-Net CT-S (:mod:`.ct_s`) and the 2D slice baseline (:mod:`.resnet2d`), the way MONAI's
``ResNet`` is one family over ``spatial_dims`` and torchvision's video ResNet takes a
``conv_builder``. What varies between the families is injected:

* ``spatial_dims`` (2 or 3) picks ``Conv2d``/``Conv3d``, ``BatchNorm2d``/``3d``, pooling;
* ``conv`` (a :data:`ConvBuilder`) builds the 3x3(x3) convolution inside a block, so R(2+1)D
  swaps in its factored convolution without copying the blocks;
* ``stem`` builds any module mapping the input to ``stem_channels``;
* ``head`` picks the output: plain logits (``"linear"``) or the ordinal CORN head (``"corn"``,
  :func:`corn_log_probs`) for ordered classes such as severity grades.

Parameter and buffer names follow torchvision/Hara/MONAI inside the blocks (``conv1``, ``bn1``,
...), so checkpoints from those code bases map onto ours by renaming a few keys
(:mod:`.weights`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ctcovid.models.registry import ModelArgumentError

__all__ = [
    "HEADS",
    "BasicBlock",
    "Bottleneck",
    "ConvBuilder",
    "HeadType",
    "ResNet",
    "ResNetStem",
    "ShortcutType",
    "ZeroPadShortcut",
    "conv_nd",
    "corn_log_probs",
    "full_conv",
]

ShortcutType = Literal["A", "B"]
HeadType = Literal["linear", "corn"]
HEADS: tuple[str, ...] = ("linear", "corn")

#: ``conv(in_channels, out_channels, stride) -> module``: the 3x3(x3) convolution of a block,
#: without bias (a BatchNorm follows, which would cancel it).
ConvBuilder = Callable[[int, int, int], nn.Module]


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _pick(spatial_dims, nn.Conv2d, nn.Conv3d)


def _norm(spatial_dims: int, channels: int) -> nn.Module:
    return _pick(spatial_dims, nn.BatchNorm2d, nn.BatchNorm3d)(channels)


def _pick(spatial_dims: int, two: type, three: type) -> type:
    if spatial_dims == 2:
        return two
    if spatial_dims == 3:
        return three
    raise ModelArgumentError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def full_conv(spatial_dims: int) -> ConvBuilder:
    """Builder of the plain 3x3 (2D) or 3x3x3 (3D) convolution, padding 1."""
    conv = conv_nd(spatial_dims)

    def build(in_channels: int, out_channels: int, stride: int) -> nn.Module:
        return conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)

    return build


def corn_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class log-probabilities ``(B, K)`` from the ``K - 1`` CORN logits ``(B, K - 1)``.

    CORN (Shi, Cao & Raschka, "Deep neural networks for rank-consistent ordinal regression based
    on conditional probabilities", arXiv:2111.08851, 2021) predicts the conditional probabilities ``sigmoid(l_k) = P(y > k | y > k - 1)``, so

        P(y > k) = prod_{j <= k} sigmoid(l_j)      (non-increasing in k by construction)
        log P(y = k) = sum_{j < k} logsigmoid(l_j) + logsigmoid(-l_k)

    where the last class has no ``logsigmoid(-l_k)`` term (``log(1 - sigmoid(l)) =
    logsigmoid(-l)``, stable for large ``|l|``). The result is normalised (``logsumexp`` is 0):
    ``softmax`` of it gives the probabilities back and cross-entropy on it is the negative log
    likelihood of the chain of conditional binary tasks, i.e. the CORN loss.
    """
    log_gt = F.logsigmoid(logits)  # (B, K-1) log P(y > k | y > k-1)
    log_le = F.logsigmoid(-logits)  # (B, K-1) log P(y = k | y > k-1)
    zero = logits.new_zeros(logits.shape[0], 1)
    reach = torch.cat([zero, log_gt.cumsum(1)], 1)  # (B, K) log P(y > k - 1) = sum_{j<k} log_gt_j
    stop = torch.cat([log_le, zero], 1)  # (B, K) the last class always stops
    return reach + stop  # (B, K) log P(y = k)


class ZeroPadShortcut(nn.Module):
    """Parameter-free "type A" shortcut (He et al. 2016, Hara et al. 2017).

    Subsamples with the stride and pads the new channels with zeros, so shallow networks gain
    no parameters at the stages that change shape.
    """

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        # A 1x1 average pool with stride s is a plain subsample: take every s-th voxel.
        x = x[(slice(None), slice(None), *[slice(None, None, s)] * (x.ndim - 2))]
        extra = self.out_channels - x.shape[1]
        # F.pad lists pads from the last dimension backwards; only the channel dim grows.
        return F.pad(x, (0, 0) * (x.ndim - 2) + (0, extra))  # (B, out_channels, *spatial / s)


def _shortcut(
    in_channels: int, out_channels: int, stride: int, spatial_dims: int, kind: ShortcutType
) -> nn.Module | None:
    """None (identity) when the shape is kept, else a type A or type B shortcut."""
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "A":
        return ZeroPadShortcut(out_channels, stride)
    if kind == "B":
        # Projection (type B): 1x1 conv + BN. Bias-free: the BN's shift makes a bias redundant.
        conv = conv_nd(spatial_dims)(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        return nn.Sequential(OrderedDict(conv=conv, bn=_norm(spatial_dims, out_channels)))
    raise ModelArgumentError(f"shortcut must be 'A' (zero padding) or 'B' (projection), got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3(x3) convolutions, each with BN; ReLU after the first and after the addition."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        spatial_dims: int = 3,
        conv: ConvBuilder | None = None,
        shortcut: ShortcutType = "A",
    ) -> None:
        super().__init__()
        conv = conv or full_conv(spatial_dims)
        self.conv1 = conv(in_channels, channels, stride)
        self.bn1 = _norm(spatial_dims, channels)
        self.conv2 = conv(channels, channels, 1)
        self.bn2 = _norm(spatial_dims, channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, channels, stride, spatial_dims, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, channels, *spatial / stride)
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3(x3) (carrying the stride, "ResNet v1.5"), 1x1 expand by 4; BN after each."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        spatial_dims: int = 3,
        conv: ConvBuilder | None = None,
        shortcut: ShortcutType = "B",
    ) -> None:
        super().__init__()
        conv = conv or full_conv(spatial_dims)
        pointwise = conv_nd(spatial_dims)
        out_channels = channels * self.expansion
        self.conv1 = pointwise(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = _norm(spatial_dims, channels)
        self.conv2 = conv(channels, channels, stride)
        self.bn2 = _norm(spatial_dims, channels)
        self.conv3 = pointwise(channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = _norm(spatial_dims, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride, spatial_dims, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))  # (B, channels, *spatial / stride)
        out = self.bn3(self.conv3(out))  # (B, 4 * channels, *spatial / stride)
        return self.relu(out + identity)


class ResNetStem(nn.Sequential):
    """Hara/He stem: one large convolution, BN, ReLU, then an optional 3x3(x3) max-pool, stride 2.

    ``kernel_size`` and ``stride`` are per-axis tuples so the depth axis of a CT volume can keep
    its resolution (stride 1) while height and width are halved.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        max_pool: bool = True,
    ) -> None:
        spatial_dims = len(kernel_size)
        if len(stride) != spatial_dims:
            raise ModelArgumentError(
                f"stem stride {tuple(stride)} and kernel {tuple(kernel_size)} differ in length"
            )
        # Tuples of length spatial_dims; typed loosely because Conv2d/Conv3d want fixed lengths.
        geometry: dict[str, Any] = {
            "kernel_size": tuple(kernel_size),
            "stride": tuple(stride),
            "padding": tuple(k // 2 for k in kernel_size),  # "same" size before the stride
        }
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=conv_nd(spatial_dims)(in_channels, out_channels, bias=False, **geometry),
            bn=_norm(spatial_dims, out_channels),
            relu=nn.ReLU(inplace=True),
        )
        if max_pool:
            pool = _pick(spatial_dims, nn.MaxPool2d, nn.MaxPool3d)
            layers["pool"] = pool(kernel_size=3, stride=2, padding=1)
        super().__init__(layers)


class ResNet(nn.Module):
    """A ResNet trunk (four stages of residual blocks), global average pool, dropout, linear head.

    With ``head="linear"`` the model returns logits ``(B, num_classes)``; softmax belongs to the
    loss or the predictor. With ``head="corn"`` (ordered classes: severity low < medium < high,
    MosMed CT-0..4) the linear layer has ``num_classes - 1`` outputs, the CORN logits of Shi et
    al. 2021 (see :func:`corn_log_probs`), and the model returns the class log-probabilities
    ``log P(y = k)``, ``(B, num_classes)``. They are logits whose softmax is exactly those
    probabilities, and cross-entropy on them is the CORN loss, so training, evaluation,
    prediction, Grad-CAM and export treat both heads alike. What differs is the decision: an
    ordinal head's grade is the median of its distribution (the CORN rank decoder, the number
    of ``k`` with ``P(y > k) > 0.5``), not the argmax (``ctcovid.metrics.decide``).
    Builders in :mod:`.resnet3d`, :mod:`.r2plus1d`, :mod:`.ct_s` and :mod:`.resnet2d` fix the
    variants; use those (or :func:`~ctcovid.models.create_model`) rather than this class.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Number of blocks in each of the four stages.
        stem: Called with ``in_channels`` (after it is validated) to build the module mapping
            ``(B, in_channels, *spatial)`` to ``stem_channels`` channels.
        in_channels: Input channels (checked in ``forward`` for a readable error).
        num_classes: Number of classes, the width of the output.
        dropout: Dropout probability before the linear head (0 disables it).
        spatial_dims: 2 for slices ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
        conv: Builder of the 3x3(x3) block convolution (default: a full convolution).
        shortcut: "A" zero-padding or "B" projection where a block changes shape.
        widths: Block widths of the four stages (multiplied by the block expansion).
        stem_channels: Channels the stem outputs.
        head: ``"linear"`` (logits) or ``"corn"`` (ordinal; log-probabilities, needs
            ``num_classes >= 2``). Readable afterwards as the attribute ``head``.
    """

    #: Submodule whose activations Grad-CAM uses: the last stage, before pooling.
    gradcam_layer = "layer4"

    def __init__(
        self,
        *,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        stem: Callable[[int], nn.Module],
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
        spatial_dims: int = 3,
        conv: ConvBuilder | None = None,
        shortcut: ShortcutType = "B",
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        head: HeadType = "linear",
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("num_classes", num_classes)
        if head not in HEADS:
            raise ModelArgumentError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if head == "corn" and num_classes < 2:
            raise ModelArgumentError(
                f"head='corn' ranks ordered classes and needs num_classes >= 2, got {num_classes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ModelArgumentError(f"dropout must be in [0, 1), got {dropout!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ModelArgumentError(
                f"layers and widths need 4 stages, got {list(layers)} and {list(widths)}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.head: HeadType = head
        conv = conv or full_conv(spatial_dims)

        self.stem = stem(in_channels)
        channels = stem_channels
        stages = []
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2  # stages 2-4 halve every axis in their first block
            blocks = []
            for j in range(n_blocks):
                blocks.append(
                    block(
                        channels,
                        width,
                        stride if j == 0 else 1,
                        spatial_dims=spatial_dims,
                        conv=conv,
                        shortcut=shortcut,
                    )
                )
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = channels
        self.pool = _pick(spatial_dims, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)(1)
        self.dropout = nn.Dropout(dropout)
        # CORN: one conditional binary task per boundary between neighbouring classes.
        self.fc = nn.Linear(channels, num_classes - 1 if head == "corn" else num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation for ReLU networks, BN as identity: the usual ResNet start, which
        # Hara et al. and torchvision use too.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (what Grad-CAM weighs), before pooling.

        ``(B, num_features, D/16, H/32, W/32)`` with the Hara stem (depth stride 1, max-pool).
        """
        self._check_input(x)
        # Shapes for the Hara stem; S = the stem's output size: (D/2, H/4, W/4) here, (D, H/2, W/2)
        # for the R(2+1)D stem, (H/4, W/4) for 2D slices.
        x = self.stem(x)  # (B, 64, *S)
        x = self.layer1(x)  # (B, 64 * e, *S); e = block expansion (1 basic, 4 bottleneck)
        x = self.layer2(x)  # (B, 128 * e, *S/2)
        x = self.layer3(x)  # (B, 256 * e, *S/4)
        return self.layer4(x)  # (B, 512 * e, *S/8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.pool(x).flatten(1)  # (B, num_features)
        x = self.dropout(x)
        return self.head_output(self.fc(x))  # (B, num_classes)

    def head_output(self, fc_out: torch.Tensor) -> torch.Tensor:
        """What ``forward`` returns for the output of ``fc``: the logits themselves for the
        linear head, the class log-probabilities :func:`corn_log_probs` for the CORN head."""
        return corn_log_probs(fc_out) if self.head == "corn" else fc_out

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return  # the trace fixes the shape anyway, and the check would warn on every trace
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            layout = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise ModelArgumentError(
                f"{type(self).__name__} expects input {layout} with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelArgumentError(f"{name} must be a positive integer, got {value!r}")
