"""Disease patterns painted on a rendered phantom (:mod:`ctcovid.synth.phantom`).

* COVID-19 (``NCP``): bilateral, peripheral (subpleural), multifocal ground-glass opacities
  (-620..-300 HU at their core, fading to the parenchyma at the edge), predominantly posterior and
  basal; their cores consolidate (-60..+25 HU) as severity rises. Vessels stay visible through them.
* Common pneumonia (``CP``): one lobe of one lung consolidated (5..35 HU) with a sharp border on
  the fissure and a ground-glass rim elsewhere; the bronchi crossing it stay air-filled, so air
  bronchograms appear when :meth:`Anatomy.composite` draws the airways over the lesion.

Severity score (CNCB, 1..6) -> fraction of the lung volume inside the lesion mask, drawn uniformly
within the band (:data:`SEVERITY_INVOLVEMENT`), each lung getting 85-115 % of it:

=====  ==============  ===========================
score  lung involved   share of lesion consolidated
=====  ==============  ===========================
1      2 - 5 %         0 %
2      5 - 12 %        3 %
3      12 - 22 %       8 %
4      22 - 35 %       15 %
5      35 - 50 %       25 %
6      50 - 70 %       35 %
=====  ==============  ===========================

The lesion mask is exact: the voxels whose HU the disease changed, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctcovid.synth.phantom import Anatomy, Tissue, lung_periphery, sample_lung_points
from ctcovid.synth.procedural import Lattice

SEVERITY_INVOLVEMENT: dict[int, tuple[float, float]] = {
    1: (0.02, 0.05), 2: (0.05, 0.12), 3: (0.12, 0.22), 4: (0.22, 0.35), 5: (0.35, 0.50), 6: (0.50, 0.70),
}  # fmt: skip
CONSOLIDATION_SHARE: dict[int, float] = {1: 0.0, 2: 0.03, 3: 0.08, 4: 0.15, 5: 0.25, 6: 0.35}


@dataclass
class Lesions:
    """Background HU with the disease painted in, and where."""

    hu: np.ndarray  # float32 (D, H, W), vessels and airways not yet composited
    mask: np.ndarray  # bool (D, H, W)
    involvement: float  # fraction of lung voxels inside the mask


def _lung_points(anat: Anatomy, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of one lung's voxels and their patient-frame points ``(n, 3)`` as ``(w, v, u)``."""
    code = Tissue.LUNG_RIGHT if side < 0 else Tissue.LUNG_LEFT
    flat = np.flatnonzero(anat.tissue.reshape(-1) == code)
    k, j, i = np.unravel_index(flat, anat.tissue.shape)
    return flat, np.stack([anat.grid.w[k], anat.grid.v[j], anat.grid.u[i]], axis=1)


def _threshold(field: np.ndarray, fraction: float) -> float:
    """Value above which ``fraction`` of ``field`` lies (np.partition: no full sort)."""
    kth = min(len(field) - 1, max(0, round((1.0 - fraction) * len(field))))
    return float(np.partition(field, kth)[kth])


def _blend(par: np.ndarray, target: float | np.ndarray, weight: np.ndarray) -> np.ndarray:
    return par + (target - par) * weight


def paint_covid(anat: Anatomy, rng: np.random.Generator, score: int) -> Lesions:
    """Bilateral peripheral multifocal ground glass whose extent follows the severity ``score``."""
    p = anat.patient
    hu = anat.hu.copy().reshape(-1)
    mask = np.zeros(hu.shape, bool)
    noise = Lattice(rng, cell_mm=8.0)
    target = rng.uniform(*SEVERITY_INVOLVEMENT[score])
    ggo_hu = rng.uniform(-560.0, -380.0)
    cons_hu = rng.uniform(-60.0, 25.0)
    for side in (-1, 1):
        n_blobs = 2 + 2 * score + int(rng.integers(0, 2))
        cand = sample_lung_points(p, rng, side, 4 * n_blobs, periphery_power=6.0)
        # COVID-19 favours the posterior, lower lungs: pick blob centres with that bias.
        back = np.clip(cand[:, 1] / p.half_depth_mm + 0.5, 0.1, 1.5)
        low = np.clip(0.8 - cand[:, 0] / p.lung_height_mm, 0.2, 1.5)
        pick = rng.choice(len(cand), size=n_blobs, replace=False, p=back * low / np.sum(back * low))
        centres = cand[pick]
        sigma = rng.uniform(9.0, 18.0, n_blobs) * (1 + 0.1 * score)
        amp = rng.uniform(0.5, 1.0, n_blobs)
        fraction = float(np.clip(target * rng.uniform(0.85, 1.15), 0.005, 0.9))
        flat, pts = _lung_points(anat, side)
        if len(flat) == 0:
            continue
        field = np.zeros(len(flat), np.float32)
        for c, s, a in zip(centres, sigma, amp, strict=True):
            field += a * np.exp(-np.sum((pts - c) ** 2, axis=1) / (2 * s * s)).astype(np.float32)
        per = np.clip(lung_periphery(p, pts[:, 0], pts[:, 1], pts[:, 2]), 0, 1)
        # Subpleural first: blobs spread along the pleura more than inwards, and large
        # involvement fills the rind under the chest wall before the core.
        rind = np.exp(-(1 - per) / 0.15)
        field = (field * (0.02 + 0.98 * rind) + 0.001 * rind) * np.exp(0.4 * noise.points(pts))
        thr = _threshold(field, fraction)
        m = field > thr
        strength = np.clip(np.log(field[m] / thr) / np.log(2.5), 0, 1)
        new = _blend(hu[flat[m]], ggo_hu, 0.5 + 0.5 * strength)
        share = CONSOLIDATION_SHARE[score]
        if share > 0 and m.sum() > 1:
            thr_c = _threshold(field[m], share)
            c = field[m] > thr_c
            new[c] = _blend(
                new[c], cons_hu, 0.5 + 0.5 * np.clip(np.log(field[m][c] / thr_c) / np.log(1.5), 0, 1)
            )
        hu[flat[m]] = new
        mask[flat[m]] = True
    return _finish(anat, hu, mask)


def _lobe(w: np.ndarray, v: np.ndarray, anat: Anatomy, side: int, lobe: str) -> np.ndarray:
    """Lobe membership by the fissures: the oblique one runs from high at the back to the anterior base."""
    p = anat.patient
    wn, vn = w / p.lung_height_mm, np.clip(v / (0.6 * p.half_depth_mm), -1, 1)
    lower = wn < -0.42 + 0.31 * (vn + 1)
    if lobe == "lower":
        return lower
    # The right middle lobe: in front of the oblique fissure, under the horizontal one.
    middle = ~lower & (wn < -0.02) & (vn < 0.3) & (side < 0)
    return middle if lobe == "middle" else ~lower & ~middle


def paint_pneumonia(anat: Anatomy, rng: np.random.Generator) -> Lesions:
    """Unilateral lobar consolidation of one lobe, bounded by its fissure (bacterial pneumonia)."""
    p = anat.patient
    hu = anat.hu.copy().reshape(-1)
    mask = np.zeros(hu.shape, bool)
    side = int(rng.choice([-1, 1]))
    lobes, weights = (
        (["lower", "upper", "middle"], [0.5, 0.35, 0.15]) if side < 0 else (["lower", "upper"], [0.6, 0.4])
    )
    lobe = str(rng.choice(lobes, p=weights))
    cand = sample_lung_points(p, rng, side, 64)
    in_lobe = cand[_lobe(cand[:, 0], cand[:, 1], anat, side, lobe)]
    seed = in_lobe[0] if len(in_lobe) else cand[0]
    sigma, fill, cons_hu = rng.uniform(40.0, 70.0), rng.uniform(0.55, 0.95), rng.uniform(5.0, 35.0)
    noise = Lattice(rng, cell_mm=10.0)
    flat, pts = _lung_points(anat, side)
    region = _lobe(pts[:, 0], pts[:, 1], anat, side, lobe)
    if region.sum() < 8:  # a lobe barely on this grid (thin slab): take the whole lung instead
        region[:] = True
    flat, pts = flat[region], pts[region]
    if len(flat):
        field = np.exp(-np.sum((pts - seed) ** 2, axis=1) / (2 * sigma**2)) * np.exp(0.35 * noise.points(pts))
        thr = _threshold(field, fill)
        m = field > thr
        strength = np.clip(np.log(field[m] / thr) / np.log(1.5), 0, 1)
        hu[flat[m]] = _blend(hu[flat[m]], cons_hu, 0.8 + 0.2 * strength)
        mask[flat[m]] = True
    return _finish(anat, hu, mask)


def _finish(anat: Anatomy, hu: np.ndarray, mask: np.ndarray) -> Lesions:
    shape = anat.hu.shape
    n_lung = int(np.count_nonzero(anat.lung_mask()))
    involvement = float(mask.sum() / n_lung) if n_lung else 0.0
    return Lesions(hu.reshape(shape).astype(np.float32), mask.reshape(shape), involvement)
