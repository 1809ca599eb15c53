"""Where did the model look? Heatmaps for a prediction, mapped back onto the scan a clinician opened.

Methods (``method=``), for a target class ``c`` with logit ``y_c`` (default: the predicted class):

* ``"ig"`` (default): integrated gradients (Sundararajan et al. 2017) at input resolution,
  ``(x - b) * mean_k d y_c / d x (b + (k + 1/2) / steps * (x - b))`` over ``steps`` points of the
  straight path from a reference scan ``b`` to the input, channels summed. Costs ``steps``
  forward + backward passes.
* ``"gradxinput"``: the one-pass version, ``(x - b) * d y_c / d x``: ~5x cheaper, as good on
  consolidation, less sharp on ground glass (see below).
* ``"gradcam"`` (Selvaraju et al. 2017): ``relu(sum_k w_k A_k)`` on the activations ``A_k`` of a
  layer, ``w_k`` the mean over voxels of ``d y_c / d A_k``;
* ``"gradcam++"`` (Chattopadhay et al. 2018): ``w_k = sum_ij alpha_ij relu(d y_c / d A_k,ij)``
  with the closed-form ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` (the exponential-score form).

For ``ig`` and ``gradxinput`` the reference (``baseline=``) says what the evidence is measured
against: ``"healthy"`` (default) is the same scan with its lung field made clear lung
(:func:`~ctcovid.predict.heatmap.clear_lungs`: the field as found, set to the median density of the
scan's own aerated lung), so the map answers "what in these lungs makes this scan class c rather
than the same chest with clear lungs": the heart, chest wall and bones, identical in both, get no
attribution at all; ``"air"`` is an all-air scan (everything denser than air is evidence; the heart
and chest wall take part of the heat), ``"zero"`` an all-zero input. Without a lung field (none
found) the healthy reference falls back to air, and :attr:`Explanation.baseline` says so.
Attributions are smoothed by a Gaussian of ``smooth_mm`` *before* negative evidence is cut
(``relu`` of the smoothed map: the net evidence of a neighbourhood), so the speckle of noisy
parenchyma cancels instead of leaving a faint positive floor over the lungs.

For the CAM methods ``layer`` names the layer (``"layer2+layer3"`` averages the per-layer maps,
each normalised); the default (``None`` or ``"auto"``) is the deepest stage whose output grid is
at least :data:`AUTO_MIN_GRID` (4 x 8 x 8) for the model's input (or a quarter of the input along
a shorter axis): ``layer2`` for a 3D ResNet at 16 x 64 x 64 or 24 x 96 x 96, where ``layer4`` is a
1 x 2 x 2 or 1 x 3 x 3 grid that cannot localize anything.

The heat is then restricted (``restrict=``) to where a lesion can be: ``"lungs"`` (default; the
lung field, see :func:`~ctcovid.predict.heatmap.lung_field`: aerated lung united with its left-right mirror so that a lobe
consolidated on one side stays inside, falling back to the body when no lungs are found),
``"body"`` (the body mask of :mod:`ctcovid.preprocess.body`), or ``"none"``.

What the measurement showed (``bench/bench_explain.py``, r3d_10 trained with ``fit`` at
24 x 96 x 96 on 48 synthetic scans, 8 held-out lesion scans per task, CP and COVID-19 each against normal;
table in ``bench/RESULTS.md``): Grad-CAM on ``layer4`` puts 2-3 % of its heat on the lesions, less
than a uniform map over the body (enrichment 0.45-0.7, pointing game 0); finer layers, Grad-CAM++
and multi-layer maps stay at 0.7-1.4x. Integrated gradients from the healthy reference, restricted
to the lung field (the default), put 56 % of all the heat on the exact lesion mask on both tasks
(61-65 % within 5 mm; 83-89 % of the hot voxels, heat >= 0.5, within 5 mm of a lesion; models
trained with a second seed: 78 % and 48 %); from an all-air reference 40-43 %, the rest spread as a
faint tail over the parenchyma, the heart and the chest wall. An untrained network of the same
architecture gets 29-31 % from the healthy reference (18-22 % from air): the reference alone moves
heat towards what differs from clear lung, the trained network adds 25-27 points to that. Gradient
x input matches IG on consolidation (CP) but not on ground glass. Guided Grad-CAM (the CAM times IG
or gradient x input) beat air-reference IG on CP but not on COVID-19, so it is not offered. Where
the lung field's mirror covers the heart, soft tissue still takes heat (17-26 % of it here).

Depth-n models see a scan as chunks; each chunk's map is brought to its slices and the chunks are
stitched along z (overlaps averaged). The map is mapped back to the *input* scan's voxel grid by
inverting the preprocessing geometry (crop box, in-plane resize, z uniformization) from
:class:`~ctcovid.preprocess.Preprocessed`'s spacing and origin, restricted, and normalised once
per scan (max = 1), so the NIfTI written by :meth:`Explanation.save` carries the input's affine and
overlays the original in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ctcovid.errors import CtcovidError
from ctcovid.predict.cam import GRADCAM_METHODS, layer_cams, resolve_layers
from ctcovid.predict.heatmap import clear_lungs, find_regions, montage_png, to_input_grid, top_slices
from ctcovid.predict.predictor import Prediction, Predictor
from ctcovid.preprocess.depth import Chunk
from ctcovid.preprocess.intensity import air_value, to_channels
from ctcovid.preprocess.pipeline import Preprocessed
from ctcovid.types import Units, Volume

CamMethod = Literal["ig", "gradxinput", "gradcam", "gradcam++"]
ATTRIBUTION_METHODS: tuple[str, ...] = ("ig", "gradxinput")
METHODS: tuple[str, ...] = (*ATTRIBUTION_METHODS, *GRADCAM_METHODS)
#: Every method :func:`explain` accepts (the name the server and CLI import).
CAM_METHODS: tuple[str, ...] = METHODS
RESTRICTIONS: tuple[str, ...] = ("lungs", "body", "none")
BASELINES: tuple[str, ...] = ("healthy", "air", "zero")
_EPS = 1e-7


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
    baseline: str = ""  # the reference ig / gradxinput started from ("" for the CAM methods)

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
            "baseline": self.baseline or None,
            "target": self.target,
            "top_slices": self.top_slices(n_slices),
        }


def safe_stem(scan_id: str) -> str:
    """A file name stem from a scan id (``a/b c`` -> ``a__b_c``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", scan_id.replace("/", "__")).strip("._") or "scan"


def attribution_maps(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    method: str = "ig",
    *,
    steps: int = 8,
    baseline: torch.Tensor | float = 0.0,
    positive: bool = True,
) -> torch.Tensor:
    """Input-resolution attributions ``(B, D, H, W)`` (not normalised) of class ``target``.

    ``ig``: integrated gradients from ``baseline`` (a tensor broadcastable to ``x``: a reference
    scan per input, one value per channel, or a number) along the straight path, midpoint rule
    with ``steps`` points; ``gradxinput``: the gradient at ``x`` times ``x - baseline``. Channels
    are summed; with ``positive`` only positive evidence is kept, else the signed map is returned.
    Runs with gradients on (no hooks): safe next to other threads.
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
    signed = (delta.float() * grad_sum / len(fractions)).sum(dim=1)
    return F.relu(signed) if positive else signed


def _baseline(predictor: Predictor, units: Units, kind: str) -> torch.Tensor | float:
    """A constant reference: 0, or an all-air scan as the pipeline would present it (one value per channel)."""
    if kind == "zero":
        return 0.0
    cfg = predictor.preprocess_config
    air = np.full((1, 1, 1), air_value(units), dtype=np.float32)
    values = to_channels(air, units, cfg.windows_hu, cfg.in_channels)  # (C, 1, 1, 1)
    return torch.from_numpy(values[None]).to(predictor.device)


class NotAssessableError(CtcovidError, ValueError):
    """A blocking scan quality check failed (the reasons are in the message)."""


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
    baseline: str = "healthy",
) -> Explanation:
    """Predict ``volume`` and explain the ``target`` class (default: the predicted one).

    ``method``: one of :data:`METHODS` (see the module docstring); ``layer``: for ``gradcam`` and
    ``gradcam++`` only, a layer name, ``"a+b"`` for several, or None / ``"auto"``; ``restrict``:
    one of :data:`RESTRICTIONS`; ``steps``, ``smooth_mm`` and ``baseline`` (one of
    :data:`BASELINES`) tune ``ig`` and ``gradxinput``.
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
    quality = predictor.check(volume)
    if quality is not None and not quality.ok:
        raise NotAssessableError(
            f"scan '{scan_id}' is not assessable, so there is nothing to explain: "
            + "; ".join(quality.blocking)
        )
    pre, chunks = predictor.prepare(volume, scan_id)
    out = predictor.forward([c.array for c in chunks])
    prediction = predictor.assemble(
        scan_id, [*volume.warnings, *pre.warnings], chunks, out, {}, None, quality
    )
    if target is None:
        target = prediction.label
    if target not in predictor.labels:
        raise CtcovidError(
            f"unknown target class {target!r}; the model's classes: {', '.join(predictor.labels)}"
        )
    t = predictor.labels.index(target)
    layers = resolve_layers(predictor, layer, chunks[0].array.shape) if method in GRADCAM_METHODS else []
    references: list[Chunk] | None = None
    base: torch.Tensor | float = 0.0
    used = ""
    healthy = method in ATTRIBUTION_METHODS and baseline == "healthy"
    # The body and lung field, found once for the reference and the restriction.
    regions = find_regions(volume, predictor.preprocess_config) if healthy or restrict != "none" else None
    if method in ATTRIBUTION_METHODS:
        used = baseline
        if healthy:
            clear = clear_lungs(volume, pre, predictor.preprocess_config, regions)
            if clear is not None:
                references = predictor.pipeline.chunks(clear, scan_id)
            else:
                used = "air (no lung field found)"
        if references is None:
            base = _baseline(predictor, volume.units, "zero" if baseline == "zero" else "air")

    def chunk_heat(x: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        if not layers:
            b = base if reference is None else reference
            return attribution_maps(predictor.model, x, t, method, steps=steps, baseline=b, positive=False)
        maps = []
        for cam in layer_cams(predictor.model, x, t, layers, method):  # (B, d, h', w') each
            up = F.interpolate(cam[:, None], size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
            if len(layers) > 1:  # every layer counts the same: normalise each chunk's map first
                up = up / up.flatten(1).amax(dim=1).clamp_min(_EPS).view(-1, 1, 1, 1, 1)
            maps.append(up[:, 0])
        return torch.stack(maps).mean(dim=0)

    heat_pre = stitch_chunks(predictor, chunks, pre.array.shape[1:], chunk_heat, references)
    # Input-resolution maps are signed and speckled: smoothed, then cut at 0; CAMs are smooth already.
    inside = regions.mask(restrict) if regions is not None and restrict != "none" else None
    heat, heat_pre = finish_heat(heat_pre, pre, volume, inside, 0.0 if layers else smooth_mm)
    name = "+".join(layers) if layers else "input"
    return Explanation(prediction, target, method, name, heat, heat_pre, volume, used)


def stitch_chunks(
    predictor: Predictor,
    chunks: Sequence[Chunk],
    shape: tuple[int, ...],
    chunk_heat: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    references: Sequence[Chunk] | None = None,
) -> np.ndarray:
    """``chunk_heat`` (a batch ``(B, C, d, H, W)`` and the same chunks of ``references`` or None
    -> maps ``(B, d, H, W)``) run over ``chunks``, ``batch_size`` at a time, and stitched along z
    into one map of ``shape`` (D, H, W) on the preprocessed grid; slices covered by several
    chunks get their mean."""
    total = np.zeros(shape, dtype=np.float32)
    count = np.zeros(shape[0], dtype=np.float32)

    def batch(items: Sequence[Chunk]) -> torch.Tensor:
        return torch.from_numpy(np.stack([c.array for c in items])).to(predictor.device)

    for i in range(0, len(chunks), predictor.batch_size):
        part = chunks[i : i + predictor.batch_size]
        ref = None if references is None else batch(references[i : i + predictor.batch_size])
        for c, m in zip(part, chunk_heat(batch(part), ref).detach().cpu().numpy()):
            total[c.start : c.stop] += m[: c.stop - c.start]
            count[c.start : c.stop] += 1
    return total / np.maximum(count, 1)[:, None, None]


def finish_heat(
    heat_pre: np.ndarray,
    pre: Preprocessed,
    volume: Volume,
    inside: np.ndarray | None,
    smooth_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A stitched (possibly signed) map smoothed (``smooth_mm``, 0: not), cut at 0, mapped onto
    ``volume``'s grid, kept ``inside`` (a mask on that grid, e.g. from
    :meth:`~ctcovid.predict.heatmap.Regions.mask`; None: anywhere) and normalised (max = 1):
    ``(heat on the input, heat_pre)``."""
    if smooth_mm > 0:
        heat_pre = ndimage.gaussian_filter(heat_pre, [smooth_mm / s for s in pre.spacing_mm])
    heat_pre = np.maximum(heat_pre, 0).astype(np.float32)
    heat = to_input_grid(heat_pre, pre, volume)
    if inside is not None:
        heat *= inside
    for a in (heat, heat_pre):
        peak = float(a.max())
        if peak > 0:
            a /= peak
    return heat, heat_pre
