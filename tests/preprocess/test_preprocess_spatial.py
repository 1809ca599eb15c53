from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from ctcovid.errors import ConfigError
from ctcovid.preprocess.spatial import (
    CropBox,
    crop_or_pad,
    fit_box_to_aspect,
    resize_inplane,
    resized_spacing,
    source_coordinates,
)


@pytest.mark.parametrize("size", [(64, 80), (20, 25), (37, 17), (111, 150)])
@pytest.mark.parametrize(("mode", "order"), [("linear", 1), ("nearest", 0)])
def test_resize_matches_scipy_zoom_with_pixel_centre_convention(
    size: tuple[int, int], mode: str, order: int
) -> None:
    x = np.random.default_rng(0).normal(size=(3, 37, 50)).astype(np.float32)
    ours = resize_inplane(x, size, mode)  # type: ignore[arg-type]
    ref = ndi.zoom(x, (1, size[0] / 37, size[1] / 50), order=order, grid_mode=True, mode="nearest")
    assert ours.shape == ref.shape == (3, *size)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_resize_handles_channel_first_4d_arrays() -> None:
    x = np.random.default_rng(1).normal(size=(2, 3, 10, 12)).astype(np.float32)
    out = resize_inplane(x, (5, 6))
    assert out.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(out[1, 2], resize_inplane(x[1, 2], (5, 6)), atol=1e-6)


def test_resize_same_size_returns_a_copy() -> None:
    x = np.ones((2, 4, 4), np.float32)
    out = resize_inplane(x, (4, 4))
    out[:] = 0
    assert x.min() == 1.0


def test_resize_rejects_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="linear, nearest"):
        resize_inplane(np.zeros((4, 4), np.float32), (2, 2), "cubic")  # type: ignore[arg-type]


def test_source_coordinates_are_pixel_centres() -> None:
    np.testing.assert_allclose(source_coordinates(4, 2), [0.5, 2.5])
    np.testing.assert_allclose(source_coordinates(2, 4), [-0.25, 0.25, 0.75, 1.25])


def test_resized_spacing_keeps_the_extent() -> None:
    assert resized_spacing((0.75, 0.5), (400, 300), (200, 100)) == (1.5, 1.5)


def test_crop_or_pad_pads_outside_the_image_with_fill() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    out = crop_or_pad(x, (-1, 3), (2, 6), fill=-1000.0)
    assert out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0, 0], -1000.0)
    np.testing.assert_array_equal(out[0, 1:, :2], x[0, :, 2:])
    np.testing.assert_array_equal(out[0, 1:, 2:], -1000.0)


def test_crop_or_pad_inside_is_a_view() -> None:
    x = np.zeros((2, 5, 5), np.float32)
    assert np.shares_memory(crop_or_pad(x, (1, 4), (0, 5), fill=0.0), x)


def test_fit_box_to_aspect_only_grows_the_box_about_its_centre() -> None:
    wide = CropBox(0, 5, 100, 300, 50, 450)  # 200 x 400
    square = fit_box_to_aspect(wide, 1.0)
    assert square.shape[1:] == (400, 400)
    assert (square.x0, square.x1) == (50, 450)
    assert square.y0 <= 100 and square.y1 >= 300
    assert (square.y0 + square.y1) / 2 == 200
    tall = fit_box_to_aspect(CropBox(0, 5, 0, 300, 0, 100), 1.0)
    assert tall.shape[1:] == (300, 300) and tall.y0 == 0
