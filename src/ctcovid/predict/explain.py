"""Where did the model look? Heatmaps for a prediction, mapped back onto the scan a clinician opened.

Methods (``method=``), for a target class ``c`` with logit ``y_c`` (default: the predicted class):

* ``"ig"`` (default): integrated gradients (Sundararajan et al. 2017) at input resolution,
  ``relu((x - b) * mean_k d y_c / d x (b + (k + 1/2) / steps * (x - b)))`` over ``steps`` points
  of the straight path from a baseline ``b`` (default: an all-air scan) to the input, channels
  summed, smoothed by a Gaussian of ``smooth_mm``. Costs ``steps`` forward + backward passes.
* ``"gradxinput"``: the one-pass version, ``relu((x - b) * d y_c / d x)``: ~5x cheaper, as good on
  consolidation, less sharp on ground glass (see below).
* ``"gradcam"`` (Selvaraju et al. 2017): ``relu(sum_k w_k A_k)`` on the activations ``A_k`` of a
  layer, ``w_k`` the mean over voxels of ``d y_c / d A_k``;
* ``"gradcam++"`` (Chattopadhay et al. 2018): ``w_k = sum_ij alpha_ij relu(d y_c / d A_k,ij)``
  with the closed-form ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` (the exponential-score form).

For the CAM methods ``layer`` names the layer (``"layer2+layer3"`` averages the per-layer maps,
each normalised); the default (``None`` or ``"auto"``) is the deepest stage whose output grid is
at least :data:`AUTO_MIN_GRID` (4 x 8 x 8) for the model's input (or a quarter of the input along
a shorter axis): ``layer2`` for a 3D ResNet at 16 x 64 x 64 or 24 x 96 x 96, where ``layer4`` is a
1 x 2 x 2 or 1 x 3 x 3 grid that cannot localize anything.

The heat is then restricted (``restrict=``) to where a lesion can be: ``"lungs"`` (default; the
lung field, see :func:`lung_field`: aerated lung united with its left-right mirror so that a lobe
consolidated on one side stays inside, falling back to the body when no lungs are found),
``"body"`` (the body mask of :mod:`ctcovid.preprocess.body`), or ``"none"``.

What the measurement showed (``bench/bench_explain.py``, r3d_10 trained with ``fit`` at
24 x 96 x 96 on 48 synthetic scans, 8 held-out lesion scans per task, CP and COVID-19 each
against normal; table in ``bench/RESULTS.md``): Grad-CAM on ``layer4`` puts 2-3 % of its heat on
the lesions, less than a uniform map over the body (enrichment 0.45-0.7, pointing game 0); finer
layers, Grad-CAM++ and multi-layer maps stay at 0.7-1.4x. Integrated gradients restricted to the
lung field (the default) put 36-42 % of the heat on the exact lesion mask (46-49 % within 5 mm,
6-12x a uniform map over the body), 84-86 % of the hot voxels (heat >= 0.5) within 5 mm of a
lesion, and the hottest voxel there in 75-100 % of scans; an untrained network of the same
architecture, restricted alike, gets 19-23 %, 23-25 % and 0-12 %. Gradient x input matches IG
on CP but not on COVID-19 (hot voxels 56 %, pointing 50 %). The lung field does most for
Grad-CAM's blobs, but IG gains from it too: half of IG's heat otherwise falls on the heart and
the chest wall next to the lesions. Guided Grad-CAM (the CAM times IG or gradient x input) beat
IG on CP but not on COVID-19 (hot voxels 46-69 %), so it is not offered.

Depth-n models see a scan as chunks; each chunk's map is brought to its slices and the chunks are
stitched along z (overlaps averaged). The map is mapped back to the *input* scan's voxel grid by
inverting the preprocessing geometry (crop box, in-plane resize, z uniformization) from
:class:`~ctcovid.preprocess.Preprocessed`'s spacing and origin, restricted, and normalised once
per scan (max = 1), so the NIfTI written by :meth:`Explanation.save` carries the input's affine and
overlays the original in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ctcovid.errors import CtcovidError
from ctcovid.predict.predictor import Prediction, Predictor
from ctcovid.preprocess.body import BodyMask, find_body
from ctcovid.preprocess.intensity import LUNG_WINDOW_HU, air_value, apply_window, display_to_unit, to_channels
from ctcovid.preprocess.pipeline import PreprocessConfig, Preprocessed
from ctcovid.types import Units, Volume

CamMethod = Literal["ig", "gradxinput", "gradcam", "gradcam++"]
GRADCAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++")
ATTRIBUTION_METHODS: tuple[str, ...] = ("ig", "gradxinput")
METHODS: tuple[str, ...] = (*ATTRIBUTION_METHODS, *GRADCAM_METHODS)
#: Every method :func:`explain` accepts (the name the server and CLI import).
CAM_METHODS: tuple[str, ...] = METHODS
RESTRICTIONS: tuple[str, ...] = ("lungs", "body", "none")
BASELINES: tuple[str, ...] = ("air", "zero")
#: The automatic CAM layer: the deepest whose grid is at least this (D, H, W), or a quarter of the
#: input's size along an axis where that is smaller.
AUTO_MIN_GRID: tuple[int, int, int] = (4, 8, 8)
#: Aerated lung and ground glass lie below this, soft tissue and consolidation above.
LUNG_THRESHOLD_HU = -300.0
_EPS = 1e-7
# In-plane 4-neighbour cross on the coarse body grid (z spacing varies: no step mixes slices).
_CROSS_2D = np.zeros((3, 3, 3), dtype=bool)
_CROSS_2D[1] = ndimage.generate_binary_structure(2, 1)


@dataclass
class Explanation:
    """A prediction with its heatmap on the input scan's grid (and on the preprocessed grid)."""

    prediction: Prediction
    target: str
    method: str
    layer: str
    heat: np.ndarray  # float32 (D, H, W) in [0, 1], the input volume's grid
    heat_preprocessed: np.ndarray  # float32 (D', H', W') in [0, 1], the network's grid
    volume: Volume

    def heat_volume(self) -> Volume:
        """The heatmap as a :class:`Volume` with the input scan's geometry (for NIfTI)."""
        v = self.volume
        return Volume(self.heat, spacing_mm=v.spacing_mm, origin_mm=v.origin_mm, direction=v.direction)

    def top_slices(self, n: int = 6) -> list[int]:
        """The ``n`` axial slices holding the most heat, in ascending z."""
        return top_slices(self.heat, n)

    def montage_png(self, n_slices: int = 6) -> bytes:
        p = self.prediction
        title = (
            f"{p.scan_id}: {p.label} ({p.probs.get(p.label or '', 0.0):.2f})  {self.method} -> {self.target}"
        )
        return montage_png(self.volume, self.heat, n_slices=n_slices, title=title)

    def save(self, out_dir: str | Path, stem: str | None = None, n_slices: int = 6) -> dict[str, Path]:
        """Write ``<stem>_heatmap.nii.gz``, ``<stem>_montage.png`` and ``<stem>_explain.json``."""
        from ctcovid.io import write_nifti

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or safe_stem(self.prediction.scan_id)
        files = {
            "heatmap": write_nifti(self.heat_volume(), out / f"{stem}_heatmap.nii.gz"),
            "montage": out / f"{stem}_montage.png",
            "json": out / f"{stem}_explain.json",
        }
        files["montage"].write_bytes(self.montage_png(n_slices))
        files["json"].write_text(
            json.dumps({**self.summary(n_slices), "files": {k: str(v) for k, v in files.items()}}, indent=2)
        )
        return files

    def summary(self, n_slices: int = 6) -> dict[str, Any]:
        return {
            "prediction": self.prediction.to_dict(),
            "method": self.method,
            "layer": self.layer,
            "target": self.target,
            "top_slices": self.top_slices(n_slices),
        }


def safe_stem(scan_id: str) -> str:
    """A file name stem from a scan id (``a/b c`` -> ``a__b_c``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", scan_id.replace("/", "__")).strip("._") or "scan"


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


def attribution_maps(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    method: str = "ig",
    *,
    steps: int = 8,
    baseline: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Input-resolution attributions ``(B, D, H, W)`` (not normalised) of class ``target``.

    ``ig``: integrated gradients from ``baseline`` (a tensor broadcastable to ``x``, e.g. one
    value per channel, or a number) along the straight path, midpoint rule with ``steps``
    points; ``gradxinput``: the gradient at ``x`` times ``x - baseline``. Channels are summed and
    only positive evidence is kept. Runs with gradients on (no hooks): safe next to other threads.
    """
    if method not in ATTRIBUTION_METHODS:
        raise CtcovidError(f"unknown attribution method {method!r}; valid: {', '.join(ATTRIBUTION_METHODS)}")
    if steps < 1:
        raise CtcovidError(f"steps={steps} is invalid; expected an integer >= 1")
    x = x.detach()
    delta = x - baseline
    fractions = [(k + 0.5) / steps for k in range(steps)] if method == "ig" else [1.0]
    grad_sum = torch.zeros_like(x, dtype=torch.float32)
    with torch.enable_grad():
        for a in fractions:
            xi = (x - (1.0 - a) * delta).requires_grad_(True)  # baseline + a * delta
            (g,) = torch.autograd.grad(model(xi)[:, target].sum(), xi)
            grad_sum += g.float()
    return F.relu((delta.float() * grad_sum / len(fractions)).sum(dim=1))


def _baseline(predictor: Predictor, units: Units, kind: str) -> torch.Tensor | float:
    """The IG baseline: 0, or an all-air scan as the pipeline would present it (one value per channel)."""
    if kind == "zero":
        return 0.0
    cfg = predictor.preprocess_config
    air = np.full((1, 1, 1), air_value(units), dtype=np.float32)
    values = to_channels(air, units, cfg.windows_hu, cfg.in_channels)  # (C, 1, 1, 1)
    return torch.from_numpy(values[None]).to(predictor.device)


def explain(
    predictor: Predictor,
    volume: Volume,
    *,
    scan_id: str = "scan",
    method: str = "ig",
    layer: str | None = None,
    target: str | None = None,
    restrict: str = "lungs",
    steps: int = 8,
    smooth_mm: float = 3.0,
    baseline: str = "air",
) -> Explanation:
    """Predict ``volume`` and explain the ``target`` class (default: the predicted one).

    ``method``: one of :data:`METHODS` (see the module docstring); ``layer``: for ``gradcam`` and
    ``gradcam++`` only, a layer name, ``"a+b"`` for several, or None / ``"auto"``; ``restrict``:
    one of :data:`RESTRICTIONS`; ``steps``, ``smooth_mm`` and ``baseline`` (``"air"`` or
    ``"zero"``) tune ``ig`` and ``gradxinput``.
    """
    if method not in METHODS:
        raise CtcovidError(f"unknown explanation method {method!r}; valid: {', '.join(METHODS)}")
    if restrict not in RESTRICTIONS:
        raise CtcovidError(f"unknown restriction {restrict!r}; valid: {', '.join(RESTRICTIONS)}")
    if baseline not in BASELINES:
        raise CtcovidError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    if layer is not None and method not in GRADCAM_METHODS:
        raise CtcovidError(
            f"layer={layer!r} applies to {' and '.join(GRADCAM_METHODS)} only; "
            f"'{method}' works on the input: drop the layer or pick method='gradcam'"
        )
    pre, chunks = predictor.prepare(volume, scan_id)
    probs = predictor.forward_probs([c.array for c in chunks])
    prediction = predictor.assemble(scan_id, [*volume.warnings, *pre.warnings], chunks, probs, {}, None)
    if target is None:
        target = prediction.label
    if target not in predictor.labels:
        raise CtcovidError(
            f"unknown target class {target!r}; the model's classes: {', '.join(predictor.labels)}"
        )
    t = predictor.labels.index(target)
    layers = resolve_layers(predictor, layer, chunks[0].array.shape) if method in GRADCAM_METHODS else []
    base = _baseline(predictor, volume.units, baseline) if method in ATTRIBUTION_METHODS else 0.0
    _, d_pre, h, w = pre.array.shape
    total = np.zeros((d_pre, h, w), dtype=np.float32)
    count = np.zeros(d_pre, dtype=np.float32)
    for i in range(0, len(chunks), predictor.batch_size):
        part = chunks[i : i + predictor.batch_size]
        x = torch.from_numpy(np.stack([c.array for c in part])).to(predictor.device)
        if layers:
            maps = []
            for cam in layer_cams(predictor.model, x, t, layers, method):  # (B, d, h', w') each
                up = F.interpolate(
                    cam[:, None], size=tuple(x.shape[2:]), mode="trilinear", align_corners=False
                )
                if len(layers) > 1:  # every layer counts the same: normalise each chunk's map first
                    up = up / up.flatten(1).amax(dim=1).clamp_min(_EPS).view(-1, 1, 1, 1, 1)
                maps.append(up[:, 0])
            heat_x = torch.stack(maps).mean(dim=0)
        else:
            heat_x = attribution_maps(predictor.model, x, t, method, steps=steps, baseline=base)
        for c, m in zip(part, heat_x.detach().cpu().numpy()):
            n = c.stop - c.start
            total[c.start : c.stop] += m[:n]
            count[c.start : c.stop] += 1
    heat_pre = total / np.maximum(count, 1)[:, None, None]
    if smooth_mm > 0 and not layers:  # input-resolution maps are speckled; CAMs are smooth already
        heat_pre = ndimage.gaussian_filter(heat_pre, [smooth_mm / s for s in pre.spacing_mm]).astype(
            np.float32
        )
    heat = to_input_grid(heat_pre, pre, volume)
    if restrict != "none":
        inside = restriction_mask(volume, predictor.preprocess_config, restrict)
        if inside is not None:
            heat *= inside
    for a in (heat, heat_pre):
        peak = float(a.max())
        if peak > 0:
            a /= peak
    name = "+".join(layers) if layers else "input"
    return Explanation(prediction, target, method, name, heat, heat_pre.astype(np.float32), volume)


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


# --------------------------------------------------------------------------- restriction
def restriction_mask(volume: Volume, config: PreprocessConfig, restrict: str) -> np.ndarray | None:
    """Where heat may stay on ``volume``'s grid for ``restrict`` ("lungs" or "body"); None: anywhere.

    The lungs fall back to the body when no lung field is found, the body to None.
    """
    threshold = config.body_threshold_hu if volume.units == Units.HU else config.body_threshold_display
    body = find_body(volume.voxels, volume.spacing_mm, units=volume.units, threshold=threshold, margin_mm=0.0)
    if not body.found:
        return None
    if restrict == "lungs":
        field = lung_field(volume, body)
        if field is not None:
            body = dataclasses.replace(body, mask=field)
    d, h, w = volume.shape
    return body.sample(np.arange(d), np.arange(h), np.arange(w))


def lung_field(volume: Volume, body: BodyMask) -> np.ndarray | None:
    """The lung field on ``body``'s coarse grid (~3 mm voxels), dense lesions included; None if none.

    Aerated lung is what lies below :data:`LUNG_THRESHOLD_HU` inside the body, two coarse voxels
    away from the skin (the body mask's edge holds air). A lobe filled by consolidation is as dense
    as the heart, so no threshold finds it; the field is therefore the aerated lung united with
    its mirror image across the body's left-right centre (a unilateral lesion is covered by the
    other side's outline; bilateral ground glass is aerated enough to pass the threshold), widened
    by one coarse voxel and kept inside the body. The mirror also covers part of the heart. Less
    than 2 % of the body (no lungs in the field of view, both lungs consolidated) gives None.
    """
    sz, sy, sx = body.stride
    coarse = volume.voxels[::sz, ::sy, ::sx]
    if volume.units == Units.HU:
        threshold = LUNG_THRESHOLD_HU
    else:  # slice images: assume the lung window they were most likely written in
        level, width = LUNG_WINDOW_HU
        threshold = float(np.clip((LUNG_THRESHOLD_HU - level + width / 2) / width, 0, 1)) * 255.0
    core = ndimage.binary_erosion(body.mask, structure=_CROSS_2D, iterations=2)
    aerated = core & (coarse < threshold)
    # The left-right array axis: the one whose direction has the largest LPS x component.
    axis = int(np.argmax(np.abs(np.asarray(volume.direction)[0])))
    others = tuple(a for a in range(3) if a != axis)
    extent = np.flatnonzero(body.mask.any(axis=others))
    if extent.size == 0:
        return None
    n = aerated.shape[axis]
    mirror = np.clip(np.rint(extent[0] + extent[-1] - np.arange(n)).astype(np.intp), 0, n - 1)
    field = aerated | np.take(aerated, mirror, axis=axis)
    field = ndimage.binary_dilation(field, structure=_CROSS_2D) & body.mask
    if field.sum() < 0.02 * body.mask.sum():
        return None
    return field


# --------------------------------------------------------------------------- geometry
def to_input_grid(heat: np.ndarray, pre: Preprocessed, volume: Volume) -> np.ndarray:
    """Resample a map on the preprocessed grid ``(D', H', W')`` onto ``volume``'s voxel grid.

    Each input voxel inside the crop box is placed on the preprocessed grid through physical
    space: its LPS position (the input's origin, direction, spacing), expressed in the
    preprocessed grid's origin and spacing (same direction: preprocessing never rotates), then
    interpolated linearly (edges clamped, the pixel-centre convention of the resize). Voxels
    outside the crop box get 0. Inverts crop, pad, resize and z uniformization alike.
    """
    d, h, w = volume.shape
    out = np.zeros((d, h, w), dtype=np.float32)
    box = pre.box
    lo = (max(box.z0, 0), max(box.y0, 0), max(box.x0, 0))
    hi = (min(box.z1, d), min(box.y1, h), min(box.x1, w))
    if any(b <= a for a, b in zip(lo, hi)):
        return out
    direction = np.asarray(volume.direction, dtype=np.float64)
    # The input's origin in mm along each array axis, relative to the preprocessed origin.
    offset = np.linalg.solve(direction, np.asarray(volume.origin_mm) - np.asarray(pre.origin_mm))
    sampled = np.asarray(heat, dtype=np.float32)
    for axis in range(3):
        index = np.arange(lo[axis], hi[axis], dtype=np.float64)
        pos = (offset[axis] + volume.spacing_mm[axis] * index) / pre.spacing_mm[axis]
        sampled = _interp_axis(sampled, pos, axis)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = sampled
    return out


def _interp_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``pos`` (edges clamped)."""
    n = a.shape[axis]
    p = np.clip(pos, 0, n - 1)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1, 1, 1]
    shape[axis] = len(p)
    wt = (p - i0).astype(np.float32).reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - wt) + np.take(a, i1, axis=axis) * wt


# --------------------------------------------------------------------------- montage
def top_slices(heat: np.ndarray, n: int = 6) -> list[int]:
    """The ``n`` axial slices with the most heat (evenly spread when there is none), ascending."""
    d = heat.shape[0]
    n = max(1, min(n, d))
    per_slice = heat.reshape(d, -1).sum(axis=1)
    if not np.any(per_slice > 0):
        return sorted({int(k) for k in np.linspace(0, d - 1, n).round()})
    return sorted(int(k) for k in np.argsort(-per_slice, kind="stable")[:n])


def _display(volume: Volume) -> np.ndarray:
    if volume.units == Units.HU:
        return apply_window(volume.voxels, *LUNG_WINDOW_HU)
    return display_to_unit(volume.voxels)


def montage_png(
    volume: Volume, heat: np.ndarray, *, n_slices: int = 6, title: str = "", slices: list[int] | None = None
) -> bytes:
    """PNG of the most activated axial slices (or ``slices``): CT in the lung window, heat over it (jet)."""
    # Lazy (import ctcovid stays light); the object API, not pyplot: no global state, thread-safe.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = sorted(slices) if slices else top_slices(heat, n_slices)
    cols = min(3, len(ks))
    rows = (len(ks) + cols - 1) // cols
    gray = _display(volume)
    jet = colormaps["jet"]
    aspect = volume.spacing_mm[1] / volume.spacing_mm[2]
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows * min(max(aspect, 0.5), 2.0) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for j, k in enumerate(ks):
        ax = fig.add_subplot(rows, cols, j + 1)
        g = gray[k][..., None]
        hk = np.clip(heat[k], 0, 1)
        alpha = (0.55 * hk)[..., None]
        rgb = g * (1 - alpha) + jet(hk)[..., :3] * alpha
        ax.imshow(np.clip(rgb, 0, 1), aspect=aspect, interpolation="nearest")
        z_mm = volume.index_to_lps((k, 0, 0))[2]
        ax.set_title(f"slice {k}  z={z_mm:.0f} mm  max {hk.max():.2f}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
