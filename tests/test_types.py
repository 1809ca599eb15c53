from __future__ import annotations

import numpy as np
import pytest

from ctcovid.errors import ScanReadError
from ctcovid.types import Severity, Volume, severity_from_score


def test_volume_casts_to_float32_and_validates_shape() -> None:
    v = Volume(np.zeros((2, 3, 4), dtype=np.int16), spacing_mm=(2, 1, 1))
    assert v.voxels.dtype == np.float32
    assert v.shape == (2, 3, 4)
    assert v.spacing_mm == (2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="spacing_mm"):
        Volume(np.zeros((2, 3, 4)), spacing_mm=(0, 1, 1))


def test_index_to_lps_follows_direction_and_spacing() -> None:
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)  # columns: z, y, x axes
    v = Volume(np.zeros((4, 4, 4)), spacing_mm=(2.5, 0.5, 0.75), origin_mm=(10, 20, 30), direction=direction)
    np.testing.assert_allclose(v.index_to_lps((2, 4, 8)), [10 + 6.0, 20 + 2.0, 30 + 5.0])


@pytest.mark.parametrize(
    ("score", "want"),
    [(1, Severity.LOW), (2, Severity.LOW), (3, Severity.MEDIUM), (4, Severity.HIGH), (6, Severity.HIGH)],
)
def test_severity_grouping_matches_covidnet_ct_s(score: int, want: Severity) -> None:
    assert severity_from_score(score) is want


def test_severity_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside 1..6"):
        severity_from_score(0)


def test_scan_read_error_is_a_value_error_naming_path_and_hint() -> None:
    e = ScanReadError("/x/y", "no DICOM files", "point at a series folder")
    assert isinstance(e, ValueError)
    assert str(e) == "cannot read scan '/x/y': no DICOM files (point at a series folder)"
