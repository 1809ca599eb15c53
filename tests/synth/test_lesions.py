"""Disease patterns: where COVID-19 and common pneumonia lesions go, how dense, how much lung."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ctcovid.synth.cohort import SynthCase, synth_case
from ctcovid.synth.lesions import SEVERITY_INVOLVEMENT, paint_covid
from ctcovid.synth.phantom import Patient, Placement, Tissue, render_anatomy

LUNGS = (Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT)


def _outer_fraction(case: SynthCase, code: Tissue) -> float:
    """Share of a lung's lesion voxels farther (in-plane, mm) from the slice's lung centroid than the median lung voxel."""
    lung = case.tissue == code
    lesion = case.lesion_mask & lung
    _, sy, sx = case.volume.spacing_mm
    rows, cols = np.mgrid[: lung.shape[1], : lung.shape[2]]
    outer = np.zeros(lung.shape, bool)
    for k in np.flatnonzero(lung.any(axis=(1, 2))):
        r = np.hypot((rows - rows[lung[k]].mean()) * sy, (cols - cols[lung[k]].mean()) * sx)
        outer[k] = r > np.median(r[lung[k]])
    return float(outer[lesion].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covid_lesions_are_bilateral_and_peripheral(seed: int) -> None:
    case = synth_case("NCP", rng=np.random.default_rng(seed), severity_score=2, shape=(32, 96, 96))
    for code in LUNGS:
        assert (case.lesion_mask & (case.tissue == code)).sum() > 20
        assert _outer_fraction(case, code) > 0.7  # by construction of the metric, the whole lung gives 0.5


def test_covid_lesions_are_ground_glass_and_consolidate_when_severe() -> None:
    mild = synth_case("NCP", rng=np.random.default_rng(0), severity_score=2, shape=(30, 80, 80))
    hu = mild.volume.voxels[mild.lesion_mask]
    assert -750 < np.median(hu) < -300
    severe = synth_case("NCP", rng=np.random.default_rng(0), severity_score=6, shape=(30, 80, 80))
    assert np.mean(severe.volume.voxels[severe.lesion_mask] > -150) > 0.1


def test_lesion_mask_covers_the_painted_voxels_and_lies_in_the_lungs() -> None:
    rng = np.random.default_rng(5)
    patient = Patient.random(rng)
    placement = Placement.random(rng, patient, (320.0, 400.0, 400.0))
    anat = render_anatomy(patient, (32, 64, 64), (10.0, 6.25, 6.25), placement, rng)
    lesions = paint_covid(anat, rng, 3)
    changed = lesions.hu != anat.hu
    assert not np.any(changed & ~lesions.mask)
    assert changed[lesions.mask].mean() > 0.99
    assert np.all(np.isin(anat.tissue[lesions.mask], LUNGS))


@pytest.mark.parametrize("seed", [0, 3])
def test_common_pneumonia_is_unilateral_dense_consolidation(seed: int) -> None:
    case = synth_case("CP", rng=np.random.default_rng(seed), shape=(40, 128, 128))
    per_lung = [int((case.lesion_mask & (case.tissue == code)).sum()) for code in LUNGS]
    assert min(per_lung) == 0 and max(per_lung) > 100
    assert np.median(case.volume.voxels[case.lesion_mask]) > -200


def test_common_pneumonia_shows_air_bronchograms() -> None:
    counts = []
    for seed in range(3):
        case = synth_case("CP", rng=np.random.default_rng(seed), shape=(40, 128, 128))
        counts.append(int((case.volume.voxels[case.lesion_mask] < -500).sum()))
    assert min(counts) > 0  # air-filled bronchi inside the consolidation


def test_normal_scan_has_an_empty_mask() -> None:
    case = synth_case("Normal", rng=np.random.default_rng(0), shape=(24, 64, 64))
    assert case.lesion_mask.dtype == bool and not case.lesion_mask.any()
    assert case.involvement == 0.0


def test_involvement_grows_with_severity_score() -> None:
    means = []
    for score in range(1, 7):
        inv = [
            synth_case(
                "NCP", rng=np.random.default_rng(seed), severity_score=score, shape=(24, 64, 64)
            ).involvement
            for seed in range(2)
        ]
        lo, hi = SEVERITY_INVOLVEMENT[score]
        assert 0.8 * lo <= np.mean(inv) <= 1.2 * hi
        means.append(np.mean(inv))
    assert all(a < b for a, b in itertools.pairwise(means))
