"""Shared fixtures of the scan I/O tests: tiny asymmetric volumes and the real-data folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ctcovid.io import CANONICAL_DIRECTION
from ctcovid.types import Volume

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_volume(
    shape: tuple[int, int, int] = (6, 20, 16),
    *,
    spacing_mm: tuple[float, float, float] = (2.5, 0.75, 0.8),
    origin_mm: tuple[float, float, float] = (-100.0, -120.5, 40.0),
    seed: int = 0,
) -> Volume:
    """Integer-HU volume with a bright block in one corner, so any flip or transpose shows."""
    rng = np.random.default_rng(seed)
    vox = rng.integers(-1024, 400, size=shape).astype(np.float32)
    d, h, w = shape
    vox[d // 2 :, : h // 3, : w // 4] = 1500.0  # superior, anterior, patient-right corner
    vox[0, -1, -1] = -1024.0
    return Volume(vox, spacing_mm=spacing_mm, origin_mm=origin_mm, direction=CANONICAL_DIRECTION.copy())


@pytest.fixture
def volume_factory() -> Callable[..., Volume]:
    return make_volume


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (repo_root/../shared/data or $CTCOVID_SHARED_DATA); skip when absent."""
    env = os.environ.get("CTCOVID_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real-data folder {path} is absent (set CTCOVID_SHARED_DATA)")
    return path
