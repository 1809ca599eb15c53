"""Load pretrained ResNet weights from MONAI, MedicalNet or Hara et al. checkpoints, offline.

The three code bases (and torchvision) name a ResNet's tensors the same way: ``conv1``/``bn1``
for the stem, ``layerX.Y.convN``/``bnN`` inside blocks, ``layerX.Y.downsample.0/1`` for
projection shortcuts and ``fc`` for the classifier. Ours differ only in the stem
(``stem.conv``/``stem.bn``) and the shortcut (``shortcut.conv``/``shortcut.bn``), so loading is
a renaming. What the files add around the tensors:

* MONAI: a plain ``state_dict()``; ``bias_downsample=True`` (its default) gives the projection
  convolutions a bias, which we fold into the following BatchNorm (exact, see
  :func:`_fold_shortcut_biases`).
* MedicalNet (Chen et al. 2019, "Med3D"): ``{"state_dict": ...}`` saved from
  ``nn.DataParallel`` (keys start with ``module.``), one input channel, a segmentation head
  ``conv_seg`` that we drop and no ``fc``. Its networks were trained with a stride-2 first
  convolution in depth and dilated stages 3-4; the weights fit ours shape for shape, but
  consider ``conv1_depth_stride=2`` when fine-tuning from them.
* Hara et al. (kenshohara/3D-ResNets-PyTorch): ``{"arch", "epoch", "state_dict", "optimizer"}``,
  often with ``module.`` prefixes; Kinetics models take 3 channels. Older releases use type A
  shortcuts for 18/34 layers, newer ones type B: build the model with the matching ``shortcut``.

A checkpoint with 3 input channels loads into a 1-channel model by summing the first
convolution over its input channels (a grey image copied into R, G and B gives the same
response), and a classifier of another ``num_classes`` is skipped, keeping the new head.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ctcovid.models.registry import WeightLoadError

__all__ = ["LoadReport", "WeightSource", "load_pretrained"]

logger = logging.getLogger(__name__)

WeightSource = Literal["auto", "monai", "medicalnet", "hara", "ctcovid"]
_SOURCES = ("auto", "monai", "medicalnet", "hara", "ctcovid")
_HEAD_PREFIX = "fc."
_STEM_CONV = "stem.conv.weight"

# (pattern on the checkpoint's key, replacement in ours), applied in order.
_RENAMES = (
    (re.compile(r"^conv1\."), "stem.conv."),
    (re.compile(r"^bn1\."), "stem.bn."),
    (re.compile(r"\.downsample\.0\."), ".shortcut.conv."),
    (re.compile(r"\.downsample\.1\."), ".shortcut.bn."),
)
# Heads of other tasks that a checkpoint may carry and a classifier never uses.
_DROPPED = {"medicalnet": re.compile(r"^conv_seg\.")}


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did, key by key (our names unless stated)."""

    source: str
    loaded: tuple[str, ...]
    #: Our tensors the checkpoint did not provide (left as initialised).
    missing: tuple[str, ...]
    #: Checkpoint keys (their names) with no place in the model.
    unexpected: tuple[str, ...]
    #: Tensors present on both sides but left as initialised: the classifier of another
    #: ``num_classes``, dropped foreign heads, or (non-strict) shape mismatches.
    skipped: tuple[str, ...]
    #: Tensors changed on the way in (channel adaptation, folded biases).
    adapted: tuple[str, ...]

    def summary(self) -> str:
        """One line for a log."""
        return (
            f"loaded {len(self.loaded)} tensors from a {self.source} checkpoint; "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"skipped {len(self.skipped)}, adapted {len(self.adapted)}"
        )


def load_pretrained(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    source: WeightSource = "auto",
    strict: bool = True,
) -> LoadReport:
    """Copy a MONAI, MedicalNet or Hara et al. ResNet checkpoint into one of our ResNets, in place.

    Works for the models built on :class:`~ctcovid.models.blocks.ResNet` with the Hara stem
    (``r3d_*``, ``ct_s*``, ``resnet50_2d``; the 2D one also takes torchvision ResNet-50 weights).

    Args:
        model: The model to fill.
        path_or_state_dict: A file saved with ``torch.save`` (read with ``weights_only=True``;
            nothing is downloaded), or an already loaded checkpoint or state dict. Nesting under
            ``"state_dict"``/``"model_state_dict"``/``"model"`` and ``module.`` prefixes are
            handled.
        source: The checkpoint's origin, or ``"auto"`` to tell from its keys; ``"ctcovid"`` is
            our own layout.
        strict: Raise if a tensor of the network body is missing, unexpected or of the wrong
            shape. The classifier (``fc``) may always be missing or of another size, since
            fine-tuning replaces it. With ``strict=False`` such keys are reported and skipped.

    Returns:
        A :class:`LoadReport`; its ``summary()`` is also logged.

    Raises:
        WeightLoadError: The file cannot be read, its layout is not recognised, or (strict)
            keys or shapes do not match; the message lists the keys and how to fix them.
    """
    if source not in _SOURCES:
        raise WeightLoadError(f"unknown weight source {source!r}; use one of {', '.join(_SOURCES)}")
    checkpoint = _read(path_or_state_dict)
    state = _unwrap(checkpoint)
    ours = model.state_dict()
    layout: str = _detect(checkpoint, state, ours) if source == "auto" else source
    if layout != "ctcovid" and _STEM_CONV not in ours:
        raise WeightLoadError(
            f"{type(model).__name__} has no Hara-style stem ('{_STEM_CONV}'), so {layout} ResNet weights "
            "do not map onto it; they fit r3d_*, ct_s* and resnet50_2d"
        )
    new_state = dict(ours)
    loaded: list[str] = []
    unexpected: list[str] = []
    skipped: list[str] = []
    adapted: list[str] = []
    mismatched: list[str] = []
    biases: dict[str, torch.Tensor] = {}
    dropped = _DROPPED.get(layout)

    for their_key, tensor in state.items():
        if dropped is not None and dropped.search(their_key):
            skipped.append(their_key)
            continue
        key = their_key if layout == "ctcovid" else _rename(their_key)
        if key.endswith(".shortcut.conv.bias") and key not in ours:
            biases[key] = tensor
            continue
        if key not in ours:
            unexpected.append(their_key)
            continue
        target = ours[key]
        if key == _STEM_CONV and tensor.shape != target.shape:
            adapted_weight = _adapt_input_channels(tensor, target.shape)
            if adapted_weight is not None:
                tensor = adapted_weight
                adapted.append(key)
        if tensor.shape != target.shape:
            if key.startswith(_HEAD_PREFIX):
                skipped.append(key)  # another num_classes: keep the new head
            else:
                mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)}")
                skipped.append(key)
            continue
        new_state[key] = tensor.to(dtype=target.dtype, device=target.device)
        loaded.append(key)

    adapted += _fold_shortcut_biases(biases, new_state, set(loaded), unexpected)
    filled = set(loaded) | set(skipped)
    # Old checkpoints (PyTorch < 0.4) have no BatchNorm step counters; they only matter for a
    # momentum=None BatchNorm, which we do not use.
    missing = [k for k in ours if k not in filled and not k.endswith("num_batches_tracked")]
    report = LoadReport(
        layout, tuple(loaded), tuple(missing), tuple(unexpected), tuple(skipped), tuple(adapted)
    )

    body_missing = [k for k in missing if not k.startswith(_HEAD_PREFIX)]
    if strict and (body_missing or unexpected or mismatched):
        raise WeightLoadError(_mismatch_message(model, layout, body_missing, unexpected, mismatched))
    model.load_state_dict(new_state)
    logger.info("%s", report.summary())
    for key in (*missing, *unexpected, *mismatched):
        logger.warning("not loaded: %s", key)
    return report


def _read(path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict
    path = os.fspath(path_or_state_dict)
    if not os.path.isfile(path):
        raise WeightLoadError(f"checkpoint file '{path}' does not exist")
    try:
        # weights_only: a checkpoint from the internet must not run code when unpickled.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError)
        raise WeightLoadError(
            f"cannot read checkpoint '{path}': {e.__class__.__name__}: {e}. It must be a file saved "
            "with torch.save holding a state dict (or a dict with one under 'state_dict')"
        ) from e
    if not isinstance(checkpoint, Mapping):
        raise WeightLoadError(
            f"checkpoint '{path}' holds a {type(checkpoint).__name__}, not a state dict; "
            "save model.state_dict() rather than the model"
        )
    return checkpoint


def _unwrap(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, without nesting and ``module.`` (DataParallel) prefixes."""
    state: Mapping[str, Any] = checkpoint
    for nest in ("state_dict", "model_state_dict", "model"):
        inner = checkpoint.get(nest)
        if isinstance(inner, Mapping):
            state = inner
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightLoadError(
            f"no tensors found in the checkpoint (top-level keys: {', '.join(map(str, list(checkpoint)[:10]))})"
        )
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def _detect(
    checkpoint: Mapping[str, Any], state: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor]
) -> str:
    if any(k.startswith("stem.") and k in ours for k in state):
        return "ctcovid"  # our own names (any family: the R(2+1)D stem differs from the Hara one)
    if any(k.startswith("conv_seg.") for k in state):
        return "medicalnet"
    if "conv1.weight" in state:
        return "hara" if "arch" in checkpoint else "monai"
    raise WeightLoadError(
        "cannot tell the checkpoint's layout: expected a ResNet with 'conv1.weight' (MONAI, "
        "MedicalNet, Hara, torchvision) or this model's own 'stem.*' keys (ctcovid); first keys: "
        f"{', '.join(list(state)[:5])}"
    )


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _adapt_input_channels(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """The first convolution's weight for another number of input channels, or None if impossible."""
    have, want = weight.shape[1], shape[1]
    if weight.shape[:1] + weight.shape[2:] != shape[:1] + shape[2:]:
        return None  # the kernel differs too: a real mismatch
    if want == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        # Spread one channel's filter over all inputs, scaled so a constant input responds the same.
        return weight.repeat(1, want, *([1] * (weight.ndim - 2))) / want
    return None


def _fold_shortcut_biases(
    biases: Mapping[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    loaded: set[str],
    unexpected: list[str],
) -> list[str]:
    """Fold projection-conv biases (MONAI ``bias_downsample=True``) into the next BatchNorm.

    BN subtracts the mean of its input, so a constant bias ``b`` before it only shifts that
    mean: BN(Wx + b) with running mean ``m`` equals BN(Wx) with running mean ``m - b``, in
    training (the batch mean absorbs ``b``) and evaluation alike. Our shortcut convolutions are
    bias-free, so we keep the function and drop the redundant parameter.
    """
    folded = []
    for key, bias in biases.items():
        mean_key = key.replace(".shortcut.conv.bias", ".shortcut.bn.running_mean")
        if mean_key not in loaded or state[mean_key].shape != bias.shape:
            unexpected.append(key)
            continue
        state[mean_key] = state[mean_key] - bias.to(state[mean_key])
        folded.append(mean_key)
    return folded


def _mismatch_message(
    model: nn.Module, source: str, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    parts = [f"{source} checkpoint does not fit {type(model).__name__}"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            more = f" ... and {len(keys) - 8} more" if len(keys) > 8 else ""
            parts.append(f"{label} ({len(keys)}): {', '.join(keys[:8])}{more}")
    if any(".downsample." in k for k in unexpected):
        parts.append("hint: the checkpoint has projection shortcuts; build the model with shortcut='B'")
    if any(".shortcut." in k for k in missing):
        parts.append("hint: the checkpoint has zero-padding shortcuts; build the model with shortcut='A'")
    if any(k.startswith(_STEM_CONV) for k in mismatched):
        parts.append(
            "hint: the first convolution differs; build the model with the checkpoint's in_channels "
            "(or 1) and conv1_depth_kernel"
        )
    parts.append("pass strict=False to load what matches")
    return "; ".join(parts)
