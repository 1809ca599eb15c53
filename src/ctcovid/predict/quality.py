"""Scan quality checks before a prediction: is this a scan the model can assess?

A model must not answer for a scan it cannot assess: an abdomen CT with no chest in it, a scout,
a chest CT cut to a third of its length, values that are not HU. :func:`check_volume` measures a
scan (:func:`ctcovid.preprocess.quality.measure`) and :func:`check_quality` judges the
measurements: a *blocking* problem means no label ("not assessable"), a *warning* travels with
the answer. :func:`reference_from_stats` summarises the training cohort's scans (spacing, slice
counts, lung field, how often the lungs were cut) into a JSON-able dict that a checkpoint stores;
given it, the checks also warn about scans unlike the training data.

Thresholds (fields of :class:`QualityThresholds`)
--------------------------------------------------

| check | threshold (field = default) | outcome |
| --- | --- | --- |
| too few slices (a scout, a single slice) | ``min_slices = 8`` | blocking |
| slices not axial | ``max_tilt_deg = 30``: slice normal vs the head-feet axis | blocking |
| no body | nothing denser than -500 HU (display: 100) of real size | blocking |
| values not HU (HU scans only) | ``hu_air_range = (-1100, -850)``: the 0.5th percentile of the voxels (padding below -1500 HU left out) must be air | blocking |
| no lung field (not a chest CT) | ``min_lung_ml = 300``; without a spacing ``min_lung_fraction = 0.02`` of the body | blocking |
| lung field cut at both ends | end-slice lung area > ``cut_area_ratio = 0.25`` of its maximum, at both ends | blocking for HU scans with known spacing; warning for display slices, or when the reference cohort was mostly cut (``cohort_cut_fraction = 0.5``) |
| lung field too short | ``min_lung_extent_mm = 120`` | as "cut at both ends" |
| lung field cut at one end | ``cut_area_ratio = 0.25`` | warning (names the end: apices or bases) |
| slice spacing, in-plane spacing or slice count outside the training range | reference min..max widened by ``range_tolerance = 0.25`` (25 %) | warning |
| units differ from the training scans (HU vs display slices) | reference ``units`` | warning |
| spacing unknown (slice images) | | warning |
| missing, undecodable or unevenly spaced slices, unknown slice positions, NaN voxels | the reader's warnings | warning |

Why these numbers: an adult chest CT holds 3-7 L of aerated lung (4.3 L on the shared real
scan) and the lungs measure 200-300 mm head to feet (256 mm there); 300 mL is a tenth of the
smallest normal volume, and the lung bases an abdomen CT catches stay below it (109 mL on the
shared abdomen scan, whose lung field is cut at its upper end). 120 mm is under half an adult
lung: a scan that short shows a slab of the chest, not the chest. The lung field is 5-35 % of
the body's voxels in chest scans (19 % on the real one, 24 % on the CC-CCII one, 5 % on the most
consolidated synthetic ones), under 1 % in abdomen scans; 2 % matches 300 mL in a 15 L body.
A cut flag means at least 2-4 cm of lung are missing (see :mod:`ctcovid.preprocess.quality`). A
real CT reads air at -1000 HU (clipped to -1024 by many scanners); a scan whose darkest voxels
sit near 0 most likely lost its RescaleIntercept.

Coverage problems are only warnings for 8-bit display slices (CC-CCII publishes folders that
often hold a subset of a scan's slices, without spacing) and when the reference says most
training scans were cut themselves: the model has learnt from such scans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctcovid.errors import ConfigError
from ctcovid.preprocess.body import default_threshold
from ctcovid.preprocess.quality import CUT_AREA_RATIO, PADDING_BELOW_HU, ScanStats, measure
from ctcovid.types import Units, Volume

REFERENCE_VERSION = 1


@dataclass(frozen=True)
class QualityThresholds:
    """Every threshold of :func:`check_quality`; the module docstring says why each default."""

    # Fewer slices than this is a scout, a localizer or a single slice, not a CT volume.
    min_slices: int = 8
    # The slice normal must lie within this many degrees of the head-feet axis (axial slices).
    max_tilt_deg: float = 30.0
    # HU scans: the darkest voxels (0.5th percentile) must be air, about -1000 HU.
    hu_air_range: tuple[float, float] = (-1100.0, -850.0)
    # Less aerated lung than this is no lung field: not a chest CT (a tenth of a normal chest).
    min_lung_ml: float = 300.0
    # The same without a spacing: lung field voxels per body voxel (chest CT: 0.05-0.35).
    min_lung_fraction: float = 0.02
    # A lung field shorter than this (head to feet) is a slab of the chest (adults: 200-300 mm).
    min_lung_extent_mm: float = 120.0
    # Lungs are cut at an end when the end slice holds more than this fraction of the largest
    # lung area (the measuring side's flags use the same default).
    cut_area_ratio: float = CUT_AREA_RATIO
    # When at least this fraction of the training scans was cut, cut scans are only a warning.
    cohort_cut_fraction: float = 0.5
    # Spacing and slice counts may exceed the training range by this fraction before a warning.
    range_tolerance: float = 0.25

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ConfigError(f"min_slices={self.min_slices!r} must be >= 1")
        if not 0.0 <= self.max_tilt_deg <= 90.0:
            raise ConfigError(f"max_tilt_deg={self.max_tilt_deg!r} must be in 0..90 degrees")
        lo, hi = (float(x) for x in self.hu_air_range)
        if not lo < hi:
            raise ConfigError(f"hu_air_range={self.hu_air_range!r} must be (low, high) with low < high")
        object.__setattr__(self, "hu_air_range", (lo, hi))
        for name in ("min_lung_ml", "min_lung_fraction", "min_lung_extent_mm", "range_tolerance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("cut_area_ratio", "cohort_cut_fraction", "min_lung_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a fraction in 0..1")


@dataclass
class QualityReport:
    """The verdict on one scan: ``ok`` unless something blocks a prediction."""

    ok: bool  # no blocking problem (a blocking problem means: no label, "not assessable")
    blocking: list[str]
    warnings: list[str]
    stats: ScanStats

    @property
    def problems(self) -> list[str]:
        """Blocking problems first, then warnings."""
        return [*self.blocking, *self.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "blocking": list(self.blocking),
            "warnings": list(self.warnings),
            "stats": self.stats.to_dict(),
        }


def reference_from_stats(stats: Sequence[ScanStats]) -> dict[str, Any]:
    """The training cohort's ranges, JSON-able, to store in a checkpoint.

    Keys: ``version``, ``n`` (scans), ``units`` (scans per unit), ``spacing_known`` (fraction),
    ``cut_fraction`` / ``cut_low_fraction`` / ``cut_high_fraction`` (scans whose lung field is cut
    at either / the first / the last end) and ``ranges``: for ``n_slices``, ``lung_fraction`` and,
    over the scans with a known spacing, ``spacing_z_mm``, ``spacing_inplane_mm``, ``lung_ml`` and
    ``lung_extent_mm``, a dict ``{n, min, max, p01, p99}`` (absent when no scan has the value).
    """
    if not stats:
        raise ValueError("reference_from_stats needs at least one ScanStats (the training scans)")
    n = len(stats)
    known = [s for s in stats if s.spacing_known]
    units: dict[str, int] = {}
    for s in stats:
        units[s.units] = units.get(s.units, 0) + 1
    values: dict[str, list[float]] = {
        "n_slices": [float(s.shape[0]) for s in stats],
        "lung_fraction": [s.lung_fraction for s in stats],
        "spacing_z_mm": [s.spacing_mm[0] for s in known],
        "spacing_inplane_mm": [x for s in known for x in s.spacing_mm[1:]],
        "lung_ml": [s.lung_ml for s in known if s.lung_ml is not None],
        "lung_extent_mm": [s.lung_extent_mm for s in known if s.lung_extent_mm is not None],
    }
    return {
        "version": REFERENCE_VERSION,
        "n": n,
        "units": units,
        "spacing_known": round(len(known) / n, 4),
        "cut_fraction": round(sum(s.cut for s in stats) / n, 4),
        "cut_low_fraction": round(sum(s.lung_cut_low for s in stats) / n, 4),
        "cut_high_fraction": round(sum(s.lung_cut_high for s in stats) / n, 4),
        "ranges": {k: _range(v) for k, v in values.items() if v},
    }


def check_quality(
    stats: ScanStats,
    reference: dict[str, Any] | None = None,
    thresholds: QualityThresholds | None = None,
) -> QualityReport:
    """Judge measured ``stats`` (see the module docstring for every check and threshold).

    ``reference`` is :func:`reference_from_stats` of the training scans (from the checkpoint);
    None skips the comparisons with the training data.
    """
    t = thresholds or QualityThresholds()
    blocking: list[str] = []
    warnings: list[str] = []
    hu = stats.units == "hu"
    n_slices = stats.shape[0]

    if n_slices < t.min_slices:
        blocking.append(
            f"only {n_slices} slice(s): a scout or a few slices, not a CT volume (need >= {t.min_slices})"
        )
    axial = stats.tilt_deg is None or stats.tilt_deg <= t.max_tilt_deg
    if not axial:
        blocking.append(
            f"slices are not axial: the slice normal is {stats.tilt_deg:.0f} deg from the head-feet axis "
            f"(at most {t.max_tilt_deg:g} deg); give the axial series, not a sagittal or coronal one"
        )
    hu_ok = True
    if hu:
        lo, hi = t.hu_air_range
        if stats.air_value is None:
            hu_ok = False
            blocking.append(
                f"values do not look like HU: no finite voxel at or above {PADDING_BELOW_HU:g} "
                "(all padding or NaN?)"
            )
        elif not lo <= stats.air_value <= hi:
            hu_ok = False
            blocking.append(
                f"values do not look like HU: the darkest voxels (0.5th percentile) are at "
                f"{stats.air_value:g}, air should be about -1000 HU (accepted {lo:g}..{hi:g}); "
                "a missing RescaleSlope/RescaleIntercept?"
            )
    if not stats.body_found:
        unit = "HU" if hu else "(display value)"
        blocking.append(
            f"no body found: nothing above {default_threshold(Units(stats.units)):g} {unit} "
            "the size of a patient in the field of view"
        )
    # The lung field is measured slice by slice: meaningless on a scout, a sagittal series, or
    # values that are not HU (the -500 HU body threshold would be wrong too).
    if stats.body_found and hu_ok and axial and n_slices >= t.min_slices:
        _check_lungs(stats, reference, t, blocking, warnings)

    if not stats.spacing_known:
        warnings.append(
            "voxel spacing unknown (slice images carry no geometry): lung volume, extent and "
            "slice orientation not checked"
        )
    if reference:
        _check_reference(stats, reference, t, warnings)
    warnings += [f"reader: {w}" for w in stats.reader_warnings]
    return QualityReport(not blocking, blocking, warnings, stats)


def check_volume(
    volume: Volume,
    reference: dict[str, Any] | None = None,
    thresholds: QualityThresholds | None = None,
) -> QualityReport:
    """Measure ``volume`` and judge it (:func:`check_quality`).

    The reader's warnings about missing, undecodable or unevenly spaced slices (and NaN voxels)
    travel in the measurements and come back as quality warnings.
    """
    return check_quality(measure(volume), reference, thresholds)


def _check_lungs(
    stats: ScanStats,
    reference: dict[str, Any] | None,
    t: QualityThresholds,
    blocking: list[str],
    warnings: list[str],
) -> None:
    """The lung field: present at all, then covered whole (appends to blocking / warnings)."""
    if stats.spacing_known and stats.lung_ml is not None:
        if stats.lung_ml < t.min_lung_ml:
            blocking.append(
                f"no lung field found: is this a chest CT? (lung field {stats.lung_ml:.0f} mL, "
                f"expected >= {t.min_lung_ml:g} mL)"
            )
            return
    elif stats.lung_fraction < t.min_lung_fraction:
        blocking.append(
            f"no lung field found: is this a chest CT? (lung field {stats.lung_fraction:.1%} of the body, "
            f"expected >= {t.min_lung_fraction:.0%})"
        )
        return

    cohort_cut = reference is not None and float(reference.get("cut_fraction", 0.0)) >= t.cohort_cut_fraction
    strict = stats.units == "hu" and stats.spacing_known and not cohort_cut
    if strict:
        why_soft = ""
    elif cohort_cut:
        why_soft = " (a warning only: most training scans were cut too)"
    else:
        why_soft = " (a warning only for slice images)"
    coverage = blocking if strict else warnings
    cut_low = stats.lung_end_ratio_low > t.cut_area_ratio
    cut_high = stats.lung_end_ratio_high > t.cut_area_ratio
    if cut_low and cut_high:
        coverage.append(
            f"lung field cut at both ends: the scan covers only part of the chest (the end slices hold "
            f"{stats.lung_end_ratio_low:.0%} and {stats.lung_end_ratio_high:.0%} of the largest lung "
            f"area; over {t.cut_area_ratio:.0%} means cut){why_soft}"
        )
    elif cut_low or cut_high:
        low_name, high_name = _end_names(stats.z_ascending)
        name, which, ratio = (
            (low_name, "first", stats.lung_end_ratio_low)
            if cut_low
            else (high_name, "last", stats.lung_end_ratio_high)
        )
        warnings.append(
            f"lung field cut at the {name}: the {which} slice holds {ratio:.0%} of the largest lung "
            f"area (over {t.cut_area_ratio:.0%} means cut)"
        )
    extent = stats.lung_extent_mm
    if stats.spacing_known and extent is not None and extent < t.min_lung_extent_mm:
        coverage.append(
            f"lung field only {extent:.0f} mm long: partial coverage of the chest (adult lungs are "
            f"200-300 mm; need >= {t.min_lung_extent_mm:g} mm){why_soft}"
        )


def _end_names(z_ascending: bool | None) -> tuple[str, str]:
    """How to call the first and the last slice's end of the scan."""
    if z_ascending is None:
        return "start of the scan", "end of the scan"
    bases, apices = "lower end (lung bases missing)", "upper end (apices missing)"
    return (bases, apices) if z_ascending else (apices, bases)


def _check_reference(
    stats: ScanStats, reference: dict[str, Any], t: QualityThresholds, warnings: list[str]
) -> None:
    """Warnings for a scan unlike the training scans (units, spacing, slice count)."""
    units = reference.get("units") or {}
    if units and stats.units not in units:
        seen = " and ".join(_UNIT_NAMES.get(u, u) for u in sorted(units))
        warnings.append(
            f"the model was trained on {seen}; this scan is {_UNIT_NAMES.get(stats.units, stats.units)}"
        )
    ranges = reference.get("ranges") or {}
    checks: list[tuple[str, str, list[float], str]] = [("n_slices", "slice count", [stats.shape[0]], "")]
    if stats.spacing_known:
        checks += [
            ("spacing_z_mm", "slice spacing", [stats.spacing_mm[0]], " mm"),
            ("spacing_inplane_mm", "in-plane spacing", list(stats.spacing_mm[1:]), " mm"),
        ]
    for key, what, vals, unit in checks:
        r = ranges.get(key)
        if not r or r.get("min") is None or r.get("max") is None:
            continue
        lo, hi = float(r["min"]), float(r["max"])
        for v in vals:
            if not lo * (1 - t.range_tolerance) <= v <= hi * (1 + t.range_tolerance):
                warnings.append(
                    f"{what} {_fmt(v)}{unit} is outside the training range {_fmt(lo)}-{_fmt(hi)}{unit}"
                )
                break


_UNIT_NAMES = {"hu": "CT in HU", "display": "8-bit display slices (PNG/JPG, not HU)"}


def _fmt(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _range(values: list[float]) -> dict[str, float | int]:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0}
    p01, p99 = np.percentile(a, [1, 99])
    return {
        "n": int(a.size),
        "min": _round(a.min()),
        "max": _round(a.max()),
        "p01": _round(p01),
        "p99": _round(p99),
    }


def _round(x: float) -> float:
    # Four significant digits: 0.7031 mm, 4325 mL; enough for ranges, short in a checkpoint.
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return round(x, 3 - math.floor(math.log10(abs(x))))
