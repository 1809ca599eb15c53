"""The model zoo: plain PyTorch classifiers of CT volumes, registered by name.

>>> from ctcovid.models import create_model, list_models
>>> model = create_model("r3d_18", in_channels=1, num_classes=3)  # doctest: +SKIP

Families: 3D ResNets (``r3d_*``, Hara et al. 2018), R(2+1)D (``r2plus1d_*``, Tran et al. 2018),
COVID-Net CT-S (``ct_s*``, Aboutalebi et al. 2021) and the 2D slice baseline (``resnet50_2d``
with :class:`SliceVoteModel`). Models take ``(B, C, D, H, W)`` (slices: ``(B, C, H, W)``) and
return logits; with ``head="corn"`` (ordered classes such as severity grades) the logits are the
class log-probabilities of the CORN ordinal head (:func:`~ctcovid.models.blocks.corn_log_probs`).
This package imports only torch.
"""

# Importing the family modules registers their builders.
from ctcovid.models import ct_s, r2plus1d, resnet2d, resnet3d, slice_baseline
from ctcovid.models.blocks import ResNet
from ctcovid.models.registry import (
    DuplicateModelError,
    InputSpec,
    ModelArgumentError,
    ModelError,
    ModelInfo,
    UnknownModelError,
    WeightLoadError,
    create_model,
    list_models,
    model_info,
    register_model,
)
from ctcovid.models.resnet2d import SliceVoteModel, aggregate_slices
from ctcovid.models.weights import LoadReport, load_pretrained

__all__ = [
    "DuplicateModelError",
    "InputSpec",
    "LoadReport",
    "ModelArgumentError",
    "ModelError",
    "ModelInfo",
    "ResNet",
    "SliceVoteModel",
    "UnknownModelError",
    "WeightLoadError",
    "aggregate_slices",
    "create_model",
    "ct_s",
    "list_models",
    "load_pretrained",
    "model_info",
    "r2plus1d",
    "register_model",
    "resnet2d",
    "resnet3d",
    "slice_baseline",
]
