"""COVID-Net CT-S: 3D residual networks grading COVID-19 lung-disease severity (low/medium/high).

Aboutalebi, Abbasi, Shafiee & Wong, "COVID-Net CT-S: 3D Convolutional Neural Network
Architectures for COVID-19 Severity Assessment using Chest CT Images", ICLR 2021 workshop
(arXiv:2105.01284), Sec. 2 and Fig. 1.

The paper says CT-S50, CT-S100 and CT-S152 have 16, 33 and 50 3D residual blocks whose output
goes through a ReLU, a dropout layer and a softmax over three severity levels, and that dropout
improved accuracy "by as much as 10%". 16 = 3+4+6+3, 33 = 3+4+23+3 and 50 = 3+8+36+3 are the
bottleneck counts of ResNet-50/101/152, so we build those 3D ResNet bodies (Hara et al. 2018
layout: 7x7x7 stem with stride 1x2x2, max-pool, projection shortcuts), then global average
pooling, dropout and a linear layer.

What the paper leaves open, and what we chose:

* **Dropout rate**: not given. We default to 0.5, the customary rate before a classifier, so
  dropout is on as the paper recommends; pass ``dropout=`` to change it.
* **Layer layout** (stem, stage widths, shortcut type, where pooling happens): not given. We use
  the standard 3D ResNet-50/101/152 layout above, which the block counts imply.
* **ReLU before dropout**: every residual block already ends in a ReLU and average pooling
  keeps the features non-negative, so a further ReLU would be the identity; we do not add one.
* **Softmax**: the models return logits; the loss (cross-entropy) and the predictor apply the
  softmax, which is numerically safer than a softmax layer inside the network.
* **Input**: one channel (HU-windowed CT), volumes uniformised to a depth of 40 slices as in the
  paper; the in-plane size (128 x 128 in the registry hint) is our choice.
"""

from __future__ import annotations

from ctcovid.models.blocks import Bottleneck, HeadType
from ctcovid.models.registry import InputSpec, register_model
from ctcovid.models.resnet3d import ResNet3d

__all__ = ["CovidNetCTS", "ct_s50", "ct_s100", "ct_s152"]

_SEVERITY_INPUT = InputSpec(in_channels=1, size=(40, 128, 128))


class CovidNetCTS(ResNet3d):
    """A COVID-Net CT-S network: a 3D bottleneck ResNet body, pool, dropout, 3-way classifier.

    See the module docstring for what follows the paper and what is our choice.
    """

    def __init__(
        self,
        *,
        layers: list[int],
        in_channels: int,
        num_classes: int,
        dropout: float,
        conv1_depth_kernel: int,
        conv1_depth_stride: int,
        head: HeadType = "linear",
    ) -> None:
        super().__init__(
            block=Bottleneck,
            layers=layers,
            in_channels=in_channels,
            num_classes=num_classes,
            dropout=dropout,
            shortcut="B",
            conv1_depth_kernel=conv1_depth_kernel,
            conv1_depth_stride=conv1_depth_stride,
            head=head,
        )


@register_model(default_input=_SEVERITY_INPUT)
def ct_s50(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.5,
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    head: HeadType = "linear",
) -> CovidNetCTS:
    """COVID-Net CT-S50 (Aboutalebi et al. 2021): 16 3D bottleneck blocks [3, 4, 6, 3], dropout 0.5."""
    return CovidNetCTS(
        layers=[3, 4, 6, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        head=head,
    )


@register_model(default_input=_SEVERITY_INPUT)
def ct_s100(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.5,
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    head: HeadType = "linear",
) -> CovidNetCTS:
    """COVID-Net CT-S100 (Aboutalebi et al. 2021): 33 3D bottleneck blocks [3, 4, 23, 3], dropout 0.5."""
    return CovidNetCTS(
        layers=[3, 4, 23, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        head=head,
    )


@register_model(default_input=_SEVERITY_INPUT)
def ct_s152(
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    dropout: float = 0.5,
    conv1_depth_kernel: int = 7,
    conv1_depth_stride: int = 1,
    head: HeadType = "linear",
) -> CovidNetCTS:
    """COVID-Net CT-S152 (Aboutalebi et al. 2021): 50 3D bottleneck blocks [3, 8, 36, 3], dropout 0.5.

    The paper's best severity model (78.5% accuracy on CNCB, Table 1).
    """
    return CovidNetCTS(
        layers=[3, 8, 36, 3],
        in_channels=in_channels,
        num_classes=num_classes,
        dropout=dropout,
        conv1_depth_kernel=conv1_depth_kernel,
        conv1_depth_stride=conv1_depth_stride,
        head=head,
    )
