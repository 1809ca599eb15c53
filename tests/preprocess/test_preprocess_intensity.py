from __future__ import annotations

import numpy as np
import pytest

from ctcovid.errors import ConfigError
from ctcovid.preprocess.intensity import (
    LUNG_WINDOW_HU,
    MEDIASTINAL_WINDOW_HU,
    apply_window,
    display_to_unit,
    to_channels,
)
from ctcovid.types import Units


def test_lung_window_maps_level_minus_and_plus_half_width_to_0_and_1() -> None:
    hu = np.array([-1350.0, -600.0, 150.0, -975.0], dtype=np.float32)
    out = apply_window(hu, *LUNG_WINDOW_HU)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.25], atol=1e-6)
    assert out.dtype == np.float32


def test_window_clips_outside_values() -> None:
    out = apply_window(np.array([-3000.0, -1351.0, 151.0, 3000.0], dtype=np.float32), -600.0, 1500.0)
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 1.0])


def test_window_rejects_non_positive_width() -> None:
    with pytest.raises(ConfigError, match="width_hu"):
        apply_window(np.zeros(3, dtype=np.float32), 0.0, 0.0)


def test_several_windows_become_channels() -> None:
    hu = np.full((2, 3, 4), 40.0, dtype=np.float32)
    out = to_channels(hu, Units.HU, (LUNG_WINDOW_HU, MEDIASTINAL_WINDOW_HU))
    assert out.shape == (2, 2, 3, 4)
    np.testing.assert_allclose(out[0], (40.0 + 1350.0) / 1500.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 0.5, atol=1e-6)  # 40 HU is the mediastinal level


def test_single_window_is_replicated_to_in_channels() -> None:
    hu = np.linspace(-1000, 500, 24, dtype=np.float32).reshape(2, 3, 4)
    out = to_channels(hu, Units.HU, (LUNG_WINDOW_HU,), in_channels=3)
    assert out.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], apply_window(hu, *LUNG_WINDOW_HU))


def test_in_channels_must_match_several_windows() -> None:
    with pytest.raises(ConfigError, match="in_channels=3"):
        to_channels(np.zeros((1, 2, 2), np.float32), Units.HU, (LUNG_WINDOW_HU, MEDIASTINAL_WINDOW_HU), 3)


def test_display_units_are_scaled_by_1_over_255_not_windowed() -> None:
    display = np.array([[[0.0, 51.0, 255.0, 300.0]]], dtype=np.float32)
    out = to_channels(display, Units.DISPLAY, (LUNG_WINDOW_HU,))
    np.testing.assert_allclose(out[0], [[[0.0, 0.2, 1.0, 1.0]]], atol=1e-6)
    np.testing.assert_array_equal(display_to_unit(display), out[0])


def test_display_units_refuse_several_windows() -> None:
    with pytest.raises(ConfigError, match="display values"):
        to_channels(np.zeros((1, 2, 2), np.float32), Units.DISPLAY, (LUNG_WINDOW_HU, MEDIASTINAL_WINDOW_HU))
