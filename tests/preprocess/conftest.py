"""Small HU chest phantoms with a patient table, for the preprocessing tests.

Built here (not with ``ctcovid.synth.cohort``) so that the tests know exactly which voxels are
body and which are table: air -1000 HU, an elliptical body at ~40 HU with two lungs at -850 HU,
a foam mattress (-900 HU, below the body threshold) under it, and a 3-voxel dense table slab
(+600 HU) under the mattress, across most of the width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from ctcovid.types import Volume


@dataclass
class Phantom:
    volume: Volume
    body: np.ndarray  # bool (D, H, W): every voxel of the patient (lungs included)
    table: np.ndarray  # bool (D, H, W): the dense table slab


def make_phantom(
    shape: tuple[int, int, int] = (20, 96, 96),
    *,
    spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5),
    gap: int = 6,
    seed: int = 0,
) -> Phantom:
    d, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx, ry, rx = 0.42 * h, 0.5 * w, 0.28 * h, 0.40 * w
    body2d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    lungs2d = np.zeros_like(body2d)
    for side in (-1, 1):
        lungs2d |= ((yy - cy) / (0.6 * ry)) ** 2 + ((xx - cx - side * 0.45 * rx) / (0.3 * rx)) ** 2 <= 1.0
    bottom = int(np.flatnonzero(body2d.any(axis=1))[-1])
    mattress2d = np.zeros_like(body2d)
    mattress2d[bottom + 1 : bottom + gap, int(0.1 * w) : int(0.9 * w)] = True
    mattress2d &= ~body2d
    table2d = np.zeros_like(body2d)
    table2d[bottom + gap : bottom + gap + 3, int(0.05 * w) : int(0.95 * w)] = True

    sl = np.full((h, w), -1000.0, dtype=np.float32)
    sl[mattress2d] = -900.0
    sl[table2d] = 600.0
    sl[body2d] = 40.0
    sl[lungs2d] = -850.0
    vox = np.repeat(sl[None], d, axis=0)
    # Lungs end before the first and last slices, as in a chest scan that covers the apices.
    vox[: max(1, d // 10)][:, lungs2d] = 40.0
    vox += rng.normal(0.0, 15.0, size=vox.shape).astype(np.float32)
    volume = Volume(vox, spacing_mm=spacing_mm, origin_mm=(-72.0, -90.0, 100.0))
    body = np.repeat(body2d[None], d, axis=0)
    table = np.repeat(table2d[None], d, axis=0)
    return Phantom(volume=volume, body=body, table=table)


@pytest.fixture
def phantom_factory() -> Callable[..., Phantom]:
    return make_phantom


@pytest.fixture
def phantom() -> Phantom:
    return make_phantom()
