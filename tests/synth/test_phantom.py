"""The phantom's anatomy: HU by tissue, where things are, and independence from the voxel size."""

from __future__ import annotations

import numpy as np
import pytest

from ctcovid.synth.cohort import SynthCase, synth_case
from ctcovid.synth.phantom import Patient, Placement, Tissue, render_anatomy
from ctcovid.synth.procedural import Grid, Lattice, rasterize_tubes, space_filling_tree


@pytest.fixture(scope="module")
def normal() -> SynthCase:
    return synth_case("Normal", rng=np.random.default_rng(0), shape=(40, 96, 96))


def _hu(case: SynthCase, *codes: Tissue) -> np.ndarray:
    return case.volume.voxels[np.isin(case.tissue, codes)]


def test_air_outside_the_body_is_minus_1000_with_noise(normal: SynthCase) -> None:
    air = _hu(normal, Tissue.AIR)
    assert air.size > 0.3 * normal.volume.voxels.size
    assert -1005 < air.mean() < -990
    assert 5 < air.std() < 30


def test_normal_lung_mean_is_in_the_range_of_real_ct(normal: SynthCase) -> None:
    lung = _hu(normal, Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT)
    assert lung.size > 0.02 * normal.volume.voxels.size
    assert -900 <= lung.mean() <= -750


def test_fat_and_soft_tissue_have_their_hu(normal: SynthCase) -> None:
    assert -130 < np.median(_hu(normal, Tissue.FAT)) < -70
    soft = _hu(normal, Tissue.SOFT)
    assert soft.size > 0.05 * normal.volume.voxels.size
    assert 20 < np.median(soft) < 70


def test_bone_is_dense(normal: SynthCase) -> None:
    bone = _hu(normal, Tissue.BONE)
    assert bone.size > 100
    assert bone.mean() > 300
    assert np.percentile(bone, 95) > 600  # cortex brighter than marrow


def test_table_lies_below_the_body_across_an_air_gap(normal: SynthCase) -> None:
    d, _h, w = normal.tissue.shape
    column = normal.tissue[d // 2, :, w // 2]  # midline, anterior (row 0) to posterior
    body_rows = np.flatnonzero(~np.isin(column, (Tissue.AIR, Tissue.TABLE)))
    table_rows = np.flatnonzero(column == Tissue.TABLE)
    assert table_rows.size and body_rows.size
    assert table_rows.min() > body_rows.max() + 1
    gap = normal.volume.voxels[d // 2, body_rows.max() + 1 : table_rows.min(), w // 2]
    assert np.all(gap < -900)


def test_lungs_taper_at_apex_and_base(normal: SynthCase) -> None:
    area = np.isin(normal.tissue, (Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT)).sum(axis=(1, 2))
    rows = np.flatnonzero(area)
    assert rows[0] > 0 and rows[-1] < len(area) - 1  # the scan covers the lungs with margins
    assert area[rows[0]] < 0.5 * area.max() and area[rows[-1]] < 0.5 * area.max()


def test_right_lung_is_on_the_image_left(normal: SynthCase) -> None:
    cols = np.arange(normal.tissue.shape[2])
    right = (normal.tissue == Tissue.LUNG_RIGHT).sum(axis=(0, 1))
    left = (normal.tissue == Tissue.LUNG_LEFT).sum(axis=(0, 1))
    assert (cols * right).sum() / right.sum() < (cols * left).sum() / left.sum()


def test_trachea_runs_down_the_midline_in_the_upper_slices(normal: SynthCase) -> None:
    d, _, w = normal.tissue.shape
    top = normal.tissue[int(0.8 * d) :] == Tissue.AIRWAY
    assert top.any(axis=(1, 2)).all()
    cols = np.flatnonzero(top.any(axis=(0, 1)))
    assert abs(cols.mean() - w / 2) < 0.1 * w


def test_dependent_lung_is_denser_than_the_front(normal: SynthCase) -> None:
    lung = np.isin(normal.tissue, (Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT))
    rows = np.nonzero(lung)[1]
    mid = np.median(rows)
    hu = normal.volume.voxels[lung]
    assert hu[rows > mid].mean() > hu[rows <= mid].mean() + 10


@pytest.mark.parametrize("seed", [0, 1])
def test_anatomy_is_the_same_in_mm_at_different_spacings(seed: int) -> None:
    volumes = []
    for shape, spacing in (((30, 64, 64), (10.0, 6.4, 6.4)), ((60, 128, 128), (5.0, 3.2, 3.2))):
        case = synth_case("Normal", rng=np.random.default_rng(seed), shape=shape, spacing_mm=spacing)
        voxel_mm3 = float(np.prod(spacing))
        lung = np.isin(case.tissue, (Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT)).sum() * voxel_mm3
        bone = (case.tissue == Tissue.BONE).sum() * voxel_mm3
        volumes.append((lung, bone))
    (lung_a, bone_a), (lung_b, bone_b) = volumes
    assert lung_a == pytest.approx(lung_b, rel=0.03)
    assert bone_a == pytest.approx(bone_b, rel=0.15)


def test_render_is_deterministic_per_seed() -> None:
    def render(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        patient = Patient.random(rng)
        placement = Placement.random(rng, patient, (300.0, 400.0, 400.0))
        return render_anatomy(patient, (20, 48, 48), (15.0, 400 / 48, 400 / 48), placement, rng).composite()

    assert np.array_equal(render(3), render(3))
    assert not np.array_equal(render(3), render(4))


def test_rasterized_tube_has_the_volume_of_a_cylinder() -> None:
    grid = Grid.make((40, 40, 40), (1.0, 1.0, 1.0), (20.0, 20.0, 20.0))
    out = np.zeros(grid.shape, np.float32)
    p0, p1 = np.array([[-10.0, -3.0, 2.0]]), np.array([[10.0, 4.0, -1.0]])
    rasterize_tubes(grid, p0, p1, np.array([3.0]), out=out)
    length = float(np.linalg.norm(p1 - p0))
    expected = np.pi * 3.0**2 * length + 4 / 3 * np.pi * 3.0**3  # capsule: cylinder + two half balls
    assert out.sum() == pytest.approx(expected, rel=0.1)


def test_tree_reaches_every_point_and_thins_towards_the_leaves() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-50, 50, size=(32, 3))
    _p0, p1, radius = space_filling_tree(rng, np.zeros(3), pts, 6.0)
    assert len(radius) == 2 * 32 - 1
    assert np.allclose(np.sort(p1[-32:], axis=0), np.sort(pts, axis=0))  # last level ends on the points
    assert radius[0] == 6.0 and radius[-1] < radius[0] / 3


def test_lattice_grid_and_point_sampling_agree() -> None:
    lattice = Lattice(np.random.default_rng(0), cell_mm=10.0)
    w, v, u = np.linspace(-100, 100, 7), np.linspace(-90, 80, 5), np.linspace(-120, 60, 6)
    grid = lattice.grid(w, v, u)
    pts = np.stack(np.meshgrid(w, v, u, indexing="ij"), axis=-1).reshape(-1, 3)
    assert np.allclose(grid.reshape(-1), lattice.points(pts), atol=1e-4)
