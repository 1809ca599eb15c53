"""Grad-CAM and Grad-CAM++ on a 3D CNN: capture a layer's activations and gradients, weigh them.

For a target class ``c`` with logit ``y_c`` and the activations ``A_k`` of a layer:

* ``"gradcam"`` (Selvaraju et al. 2017): ``relu(sum_k w_k A_k)``, ``w_k`` the mean over voxels of
  ``d y_c / d A_k``;
* ``"gradcam++"`` (Chattopadhay et al. 2018): ``w_k = sum_ij alpha_ij relu(d y_c / d A_k,ij)`` with
  the closed-form ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` (the exponential-score form).

:func:`resolve_layers` picks the layer(s) by name, or automatically: the deepest stage whose grid
is at least :data:`AUTO_MIN_GRID`. Used by :func:`ctcovid.predict.explain.explain`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctcovid.errors import CtcovidError
from ctcovid.predict.predictor import Predictor

GRADCAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++")
#: The automatic CAM layer: the deepest whose grid is at least this (D, H, W), or a quarter of the
#: input's size along an axis where that is smaller.
AUTO_MIN_GRID: tuple[int, int, int] = (4, 8, 8)
_EPS = 1e-7


# --------------------------------------------------------------------------- CAM
@contextmanager
def _capture(layers: Sequence[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """Capture the outputs of ``layers`` with gradient, for this thread only.

    The forward runs under ``no_grad`` up to the first hooked layer to run; its hook detaches the
    output, makes it require grad and turns gradients on for the rest of the forward, so autograd
    keeps only the (small) graph from that layer to the logits. Deeper hooked layers are recorded
    as they are, inside that graph. Other threads (a server predicting concurrently with the same
    model) pass through untouched.
    """
    owner = threading.get_ident()
    store: dict[int, torch.Tensor] = {}

    def make_hook(i: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor | None:
            if threading.get_ident() != owner:
                return None
            if torch.is_grad_enabled():  # a shallower hooked layer already started the graph
                store[i] = out
                return None
            act = out.detach().requires_grad_(True)
            store[i] = act
            torch.set_grad_enabled(True)  # restored by the caller's no_grad() on exit
            return act

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(layers)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def find_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        names = [n for n, _ in model.named_children()]
        raise CtcovidError(
            f"layer '{name}' not found in the model; top-level layers: {', '.join(names)}"
        ) from e


def _weighted(act: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    act, grads = act.detach().float(), grads.float()
    dims = tuple(range(2, act.ndim))
    if method == "gradcam":
        weights = grads.mean(dim=dims, keepdim=True)
    else:
        g2, g3 = grads.pow(2), grads.pow(3)
        alpha = g2 / (2 * g2 + act.sum(dim=dims, keepdim=True) * g3 + _EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * F.relu(grads)).sum(dim=dims, keepdim=True)
    return F.relu((weights * act).sum(dim=1))


def layer_cams(
    model: nn.Module, x: torch.Tensor, target: int, layers: Sequence[str], method: str = "gradcam"
) -> list[torch.Tensor]:
    """One class activation map ``(B, d, h, w)`` (not normalised) per layer, from one forward."""
    if method not in GRADCAM_METHODS:
        raise CtcovidError(f"unknown CAM method {method!r}; valid: {', '.join(GRADCAM_METHODS)}")
    modules = [find_layer(model, name) for name in layers]
    with _capture(modules) as store, torch.no_grad():
        logits = model(x)
        missing = [name for i, name in enumerate(layers) if i not in store]
        if missing:
            raise CtcovidError(f"layer '{missing[0]}' was not used by the forward pass; pick another layer")
        acts = [store[i] for i in range(len(layers))]
        grads = torch.autograd.grad(logits[:, target].sum(), acts)
    return [_weighted(a, g, method) for a, g in zip(acts, grads)]


def cam_maps(
    model: nn.Module, x: torch.Tensor, target: int, layer: str, method: str = "gradcam"
) -> torch.Tensor:
    """Class activation maps ``(B, d, h, w)`` (not normalised) of a batch ``x`` for class ``target``."""
    return layer_cams(model, x, target, [layer], method)[0]


# --------------------------------------------------------------------------- layers
def candidate_layers(predictor: Predictor) -> list[str]:
    """The model's stages, shallow to deep, named like its registered Grad-CAM layer.

    ``layer4`` gives ``layer1 .. layer4`` and ``model.layer4`` gives ``model.layer1 ..``; a
    name without a trailing stage number is the only candidate.
    """
    from ctcovid.models import model_info

    default = model_info(predictor.model_name).gradcam_layer if predictor.model_name else "layer4"
    m = re.fullmatch(r"(.*?)(\d+)", default)
    if m is None:
        return [default]
    names = [f"{m.group(1)}{k}" for k in range(1, int(m.group(2)) + 1)]
    return [n for n in names if _has_layer(predictor.model, n)] or [default]


def _has_layer(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def layer_grids(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The spatial output shape of each named layer for the input ``x`` (one no-grad forward)."""
    owner = threading.get_ident()
    shapes: dict[str, tuple[int, ...]] = {}

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if threading.get_ident() == owner:
                shapes[name] = tuple(out.shape[2:])

        return hook

    handles = [find_layer(model, n).register_forward_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def resolve_layers(predictor: Predictor, layer: str | None, input_shape: tuple[int, ...]) -> list[str]:
    """The CAM layer(s): ``layer`` split on ``+``, or the automatic choice for None or ``"auto"``.

    ``input_shape`` is one network input ``(C, D, H, W)``. The automatic choice is the deepest
    of :func:`candidate_layers` whose grid reaches :data:`AUTO_MIN_GRID` on every axis, or a
    quarter of the input's size where that is smaller (depth-4 chunks need one cell in z), else
    the shallowest.
    """
    if layer is not None and layer != "auto":
        names = [n.strip() for n in layer.split("+") if n.strip()]
        if not names:
            raise CtcovidError(f"layer={layer!r} names no layer; e.g. 'layer3' or 'layer2+layer3'")
        for n in names:
            find_layer(predictor.model, n)
        return names
    names = candidate_layers(predictor)
    x = torch.zeros((1, *input_shape), dtype=torch.float32, device=predictor.device)
    grids = layer_grids(predictor.model, x, names)
    spatial = input_shape[1:]
    for name in reversed(names):
        grid = grids.get(name, ())
        if not grid:
            continue
        need = [min(m, max(1, s // 4)) for m, s in zip(AUTO_MIN_GRID[-len(grid) :], spatial[-len(grid) :])]
        if all(g >= n for g, n in zip(grid, need)):
            return [name]
    return [names[0]]
