"""Scan quality checks: which scans a model may answer for, and why not the others."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ctcovid.errors import ConfigError
from ctcovid.io import load_volume, write_dicom_series
from ctcovid.predict.quality import QualityThresholds, check_quality, check_volume, reference_from_stats
from ctcovid.preprocess.quality import ScanStats, measure
from ctcovid.synth import SynthConfig, generate_cohort
from ctcovid.synth.cohort import SynthCase
from ctcovid.types import Units, Volume

SPACING_UNKNOWN = "voxel spacing unknown"


@pytest.fixture(scope="module")
def chest(shared_data: Path) -> Volume:
    return load_volume(shared_data / "chest-ct-dicom-jpegls")


def _part(volume: Volume, start: float, stop: float) -> Volume:
    d = volume.shape[0]
    return volume.with_voxels(volume.voxels[round(start * d) : round(stop * d)])


def _stats(**changes: object) -> ScanStats:
    """A passing chest CT's statistics, with ``changes``."""
    base = ScanStats(
        units="hu", shape=(120, 512, 512), spacing_mm=(1.5, 0.7, 0.7), spacing_known=True,
        axial=True, tilt_deg=0.0, z_ascending=True, air_value=-1020.0, body_found=True,
        body_fraction=0.45, lung_fraction=0.2, lung_ml=4500.0, lung_extent_mm=260.0,
        lung_slices=173, lung_end_ratio_low=0.0, lung_end_ratio_high=0.01,
        lung_cut_low=False, lung_cut_high=False,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _cut_both(**changes: object) -> ScanStats:
    return _stats(
        lung_end_ratio_low=0.7, lung_end_ratio_high=0.8, lung_cut_low=True, lung_cut_high=True, **changes
    )


# --------------------------------------------------------------------------- real scans
@pytest.mark.realdata
def test_real_chest_ct_passes(chest: Volume) -> None:
    report = check_volume(chest)
    assert report.ok and report.blocking == [] and report.warnings == []


@pytest.mark.realdata
def test_real_abdomen_ct_is_not_assessable_for_want_of_lungs(shared_data: Path) -> None:
    report = check_volume(load_volume(shared_data / "abdomen-ct.nii.gz"))
    assert not report.ok
    assert any("no lung field" in b and "mL" in b for b in report.blocking), report.blocking


@pytest.mark.realdata
def test_real_chest_middle_third_is_not_assessable_for_coverage(chest: Volume) -> None:
    report = check_volume(_part(chest, 1 / 3, 2 / 3))
    assert not report.ok
    assert any("cut at both ends" in b for b in report.blocking), report.blocking


@pytest.mark.realdata
def test_real_chest_without_apices_warns_about_the_upper_end(chest: Volume) -> None:
    report = check_volume(_part(chest, 0, 2 / 3))
    assert report.ok
    assert any("upper end (apices missing)" in w for w in report.warnings), report.warnings


@pytest.mark.realdata
def test_real_chest_without_bases_warns_about_the_lower_end(chest: Volume) -> None:
    report = check_volume(_part(chest, 1 / 3, 1))
    assert report.ok
    assert any("lower end (lung bases missing)" in w for w in report.warnings), report.warnings


@pytest.mark.realdata
def test_real_cc_ccii_png_scan_is_not_blocked(shared_data: Path) -> None:
    report = check_volume(load_volume(shared_data / "cc-ccii-png" / "CP" / "0" / "3132"))
    assert report.ok and report.blocking == []
    assert any(SPACING_UNKNOWN in w for w in report.warnings)


# --------------------------------------------------------------------------- synthetic cohorts
@pytest.mark.parametrize(
    ("task", "fmt"), [("diagnosis", "dicom"), ("diagnosis", "png"), ("severity", "nifti")]
)
def test_synthetic_cohort_scans_pass(tmp_path: Path, task: str, fmt: str) -> None:
    # The demo trains and predicts on these: a check that refused them would refer everything.
    generate_cohort(tmp_path, SynthConfig(n=6, task=task, format=fmt, seed=3))
    with (tmp_path / "labels.csv").open(newline="") as f:
        volumes = [load_volume(tmp_path / row["path"]) for row in csv.DictReader(f)]
    stats = [measure(v) for v in volumes]
    reference = reference_from_stats(stats)
    for s in stats:
        for ref in (None, reference):
            report = check_quality(s, ref)
            assert report.ok, report.blocking
            assert [w for w in report.warnings if SPACING_UNKNOWN not in w] == []


def test_synthetic_severity_extremes_pass() -> None:
    from ctcovid.synth import synth_case

    for score in (1, 6):  # score 6 consolidates most of the lungs
        case = synth_case("NCP", rng=np.random.default_rng(score), severity_score=score, shape=(40, 64, 64))
        report = check_volume(case.volume)
        assert report.ok and report.warnings == [], report.problems


# --------------------------------------------------------------------------- blocking problems
def test_values_shifted_from_hu_are_blocked(case: SynthCase) -> None:
    report = check_volume(case.volume.with_voxels(case.volume.voxels + 1024.0))  # a missing rescale
    assert not report.ok
    assert any("do not look like HU" in b for b in report.blocking), report.blocking


def test_three_slices_are_blocked(case: SynthCase) -> None:
    report = check_volume(case.volume.with_voxels(case.volume.voxels[8:11]))
    assert not report.ok
    assert any("only 3 slice(s)" in b for b in report.blocking), report.blocking


def test_non_axial_slices_are_blocked(case: SynthCase) -> None:
    # Axis 0 along patient left-right: a sagittal series.
    sagittal = dataclasses.replace(case.volume, direction=np.eye(3))
    report = check_volume(sagittal)
    assert not report.ok
    assert any("not axial" in b and "90 deg" in b for b in report.blocking), report.blocking


def test_empty_field_is_blocked_for_want_of_a_body() -> None:
    report = check_volume(Volume(np.full((20, 48, 48), -1000.0, dtype=np.float32)))
    assert any("no body found" in b for b in report.blocking), report.blocking


def test_no_lung_field_without_spacing_names_the_fraction() -> None:
    report = check_quality(
        _stats(spacing_known=False, lung_ml=None, lung_extent_mm=None, lung_fraction=0.004)
    )
    assert any("no lung field" in b and "0.4% of the body" in b for b in report.blocking), report.blocking


# --------------------------------------------------------------------------- coverage: when only a warning
def test_cut_at_both_ends_is_only_a_warning_for_display_slices() -> None:
    report = check_quality(_cut_both(units="display", air_value=0.0))
    assert report.ok
    assert any("cut at both ends" in w for w in report.warnings), report.warnings


def test_cut_at_both_ends_is_only_a_warning_when_training_scans_were_mostly_cut() -> None:
    reference = reference_from_stats([_cut_both(), _cut_both(), _stats()])
    assert check_quality(_cut_both()).ok is False
    report = check_quality(_cut_both(), reference)
    assert report.ok
    assert any("cut at both ends" in w and "training scans were cut" in w for w in report.warnings)


def test_thresholds_change_the_verdict() -> None:
    stats = _stats(lung_ml=250.0)
    assert not check_quality(stats).ok
    assert check_quality(stats, thresholds=QualityThresholds(min_lung_ml=200.0)).ok


def test_invalid_threshold_names_the_field() -> None:
    with pytest.raises(ConfigError, match="cut_area_ratio"):
        QualityThresholds(cut_area_ratio=2.0)


# --------------------------------------------------------------------------- against the training cohort
def test_slice_spacing_outside_the_training_range_warns_naming_both() -> None:
    reference = reference_from_stats([_stats(spacing_mm=(1.0, 0.7, 0.7)), _stats(spacing_mm=(2.0, 0.7, 0.7))])
    report = check_quality(_stats(spacing_mm=(10.0, 0.7, 0.7)), reference)
    assert report.ok
    assert "slice spacing 10 mm is outside the training range 1-2 mm" in report.warnings


def test_units_unlike_the_training_scans_warn() -> None:
    reference = reference_from_stats([_stats(units="display", spacing_known=False, lung_ml=None)])
    report = check_quality(_stats(), reference)
    assert any("trained on 8-bit display slices" in w and "CT in HU" in w for w in report.warnings)


def test_reference_is_json_and_holds_the_cohort_ranges() -> None:
    reference = reference_from_stats([_stats(shape=(n, 512, 512)) for n in (100, 200, 300)])
    assert json.loads(json.dumps(reference)) == reference
    assert reference["n"] == 3 and reference["units"] == {"hu": 3} and reference["cut_fraction"] == 0.0
    assert reference["ranges"]["n_slices"]["min"] == 100 and reference["ranges"]["n_slices"]["max"] == 300
    assert reference["ranges"]["spacing_inplane_mm"]["max"] == 0.7


# --------------------------------------------------------------------------- reader warnings, report
def test_missing_slices_reported_by_the_reader_become_a_warning(case: SynthCase, tmp_path: Path) -> None:
    files = write_dicom_series(case.volume, tmp_path / "series")  # in slice order
    files[len(files) // 2].unlink()
    report = check_volume(load_volume(tmp_path / "series"))
    assert report.ok
    assert any(w.startswith("reader: missing slices") for w in report.warnings), report.warnings


def test_report_lists_blocking_problems_first_and_is_json(case: SynthCase) -> None:
    report = check_volume(case.volume.with_voxels(case.volume.voxels[8:11]))
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["problems"] == [*d["blocking"], *d["warnings"]]
    assert ScanStats.from_dict(d["stats"]) == report.stats


def test_display_volume_needs_no_hu() -> None:
    report = check_quality(_stats(units="display", air_value=0.0))
    assert report.ok and report.problems == []
    assert Units(report.stats.units) is Units.DISPLAY
