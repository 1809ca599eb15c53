"""Scan measurements (lung field, coverage, air value) on real and synthetic scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctcovid.io import load_volume
from ctcovid.preprocess.quality import ScanStats, measure
from ctcovid.synth import synth_case
from ctcovid.types import Units, Volume


@pytest.fixture(scope="module")
def chest(shared_data: Path) -> Volume:
    return load_volume(shared_data / "chest-ct-dicom-jpegls")


@pytest.fixture(scope="module")
def chest_stats(chest: Volume) -> ScanStats:
    return measure(chest)


@pytest.fixture(scope="module")
def synthetic() -> Volume:
    return synth_case("Normal", rng=np.random.default_rng(5), shape=(60, 96, 96)).volume


def _third(volume: Volume, part: slice) -> Volume:
    d = volume.shape[0]
    k = [0, d // 3, 2 * d // 3, d]
    return volume.with_voxels(volume.voxels[k[part.start] : k[part.stop]])


# --------------------------------------------------------------------------- real scans
@pytest.mark.realdata
def test_real_chest_lung_field_is_an_adult_pair_of_lungs(chest_stats: ScanStats) -> None:
    s = chest_stats
    assert 2000 < s.lung_ml < 8000  # type: ignore[operator]
    assert 200 < s.lung_extent_mm < 300  # type: ignore[operator]
    assert 0.1 < s.lung_fraction < 0.4


@pytest.mark.realdata
def test_real_chest_lungs_taper_off_inside_the_field(chest_stats: ScanStats) -> None:
    assert not chest_stats.lung_cut_low and not chest_stats.lung_cut_high
    assert chest_stats.lung_end_ratio_low < 0.05 and chest_stats.lung_end_ratio_high < 0.05


@pytest.mark.realdata
def test_real_chest_geometry_and_air(chest_stats: ScanStats) -> None:
    s = chest_stats
    assert (s.units, s.shape, s.spacing_known) == ("hu", (167, 512, 512), True)
    assert s.axial is True and s.tilt_deg == 0.0 and s.z_ascending is True
    assert s.air_value == pytest.approx(-1024.0, abs=30)
    assert s.body_found and 0.2 < s.body_fraction < 0.8


@pytest.mark.realdata
def test_real_chest_lower_two_thirds_is_cut_at_the_apex_end(chest: Volume) -> None:
    s = measure(_third(chest, slice(0, 2)))
    assert s.lung_cut_high and not s.lung_cut_low  # axis 0 runs inferior -> superior


@pytest.mark.realdata
def test_real_chest_middle_third_is_cut_at_both_ends(chest: Volume) -> None:
    s = measure(_third(chest, slice(1, 2)))
    assert s.lung_cut_low and s.lung_cut_high
    assert s.lung_extent_mm is not None and s.lung_extent_mm < 120


@pytest.mark.realdata
def test_real_abdomen_bowel_gas_is_not_lung(shared_data: Path) -> None:
    # The scan's transverse colon holds ~220 mL of gas; only the lung bases at its top count.
    s = measure(load_volume(shared_data / "abdomen-ct.nii.gz"))
    assert s.lung_ml is not None and 20 < s.lung_ml < 200
    assert s.lung_cut_high and not s.lung_cut_low
    assert s.lung_fraction < 0.01


@pytest.mark.realdata
def test_real_cc_ccii_png_lung_field_without_spacing(shared_data: Path) -> None:
    s = measure(load_volume(shared_data / "cc-ccii-png" / "CP" / "0" / "3132"))
    assert s.units == "display" and not s.spacing_known
    assert s.lung_ml is None and s.lung_extent_mm is None
    assert s.axial is None and s.z_ascending is None
    assert 0.1 < s.lung_fraction < 0.4 and s.lung_slices > 20
    assert not s.lung_cut_low and not s.lung_cut_high


@pytest.mark.realdata
def test_padding_outside_the_reconstructed_field_is_not_air(chest: Volume) -> None:
    vox = chest.voxels[60:100].copy()  # enough slices for the air value, a quarter of the memory
    yy, xx = np.mgrid[0:512, 0:512]
    vox[:, (yy - 255.5) ** 2 + (xx - 255.5) ** 2 > 256**2] = -2048.0  # common PixelPaddingValue
    assert measure(chest.with_voxels(vox)).air_value == pytest.approx(-1024.0, abs=30)


# --------------------------------------------------------------------------- synthetic scans
def test_synthetic_chest_lungs_are_measured_whole(synthetic: Volume) -> None:
    s = measure(synthetic)
    assert 1000 < s.lung_ml < 8000  # type: ignore[operator]
    assert 180 < s.lung_extent_mm < 320  # type: ignore[operator]
    assert not s.lung_cut_low and not s.lung_cut_high


def test_synthetic_chest_middle_third_is_cut_at_both_ends(synthetic: Volume) -> None:
    s = measure(_third(synthetic, slice(1, 2)))
    assert s.lung_cut_low and s.lung_cut_high


def test_display_slices_find_the_lung_field(synthetic: Volume) -> None:
    # A lung-windowed 8-bit export of the same scan, without spacing (as a PNG folder is read).
    display = np.clip((synthetic.voxels + 1350.0) / 1500.0 * 255.0, 0, 255).round()
    vol = Volume(display, units=Units.DISPLAY, spacing_known=False)
    s = measure(vol)
    assert s.lung_ml is None and s.units == "display"
    assert s.lung_fraction == pytest.approx(measure(synthetic).lung_fraction, rel=0.3)


def test_shifted_values_move_the_air_value(synthetic: Volume) -> None:
    assert measure(synthetic).air_value == pytest.approx(-1010, abs=20)
    assert measure(synthetic.with_voxels(synthetic.voxels + 1024)).air_value == pytest.approx(10, abs=20)


def test_empty_field_has_no_body_and_no_lungs() -> None:
    s = measure(Volume(np.full((10, 32, 32), -1000.0, dtype=np.float32)))
    assert not s.body_found and s.lung_fraction == 0.0 and s.lung_slices == 0
    assert not s.lung_cut_low and not s.lung_cut_high


def test_scan_stats_round_trip_through_json(synthetic: Volume) -> None:
    s = measure(synthetic)
    text = json.dumps(s.to_dict())
    assert ScanStats.from_dict(json.loads(text)) == s


def test_scan_stats_from_dict_ignores_unknown_keys(synthetic: Volume) -> None:
    s = measure(synthetic)
    assert ScanStats.from_dict({**s.to_dict(), "added_later": 1}) == s


def test_lungs_darker_than_the_emphysema_threshold_are_still_lungs(synthetic: Volume) -> None:
    # Severe emphysema (or a sharp, noisy kernel) puts most lung voxels below -950 HU: a lung of
    # litres is not bowel gas, however dark.
    normal = measure(synthetic)
    v = synthetic.voxels.copy()
    v[(v > -990) & (v < -500)] = -980.0
    dark = measure(synthetic.with_voxels(v))
    assert dark.lung_ml is not None and normal.lung_ml is not None
    assert dark.lung_ml > 0.8 * normal.lung_ml
