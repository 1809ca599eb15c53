from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from ctcovid.preprocess.body import crop_body, find_body
from ctcovid.preprocess.intensity import apply_window
from ctcovid.types import Units, Volume

DENSE_HU = -500.0


def _lowest_body_row(body: np.ndarray) -> int:
    return int(np.flatnonzero(body.any(axis=(0, 2)))[-1])


def test_table_is_removed_below_the_body(phantom) -> None:
    crop = crop_body(phantom.volume)
    box = crop.box
    assert crop.found and crop.warning is None
    # The table lies inside the generous box, so it is the masking that has to remove it.
    assert box.y1 > int(np.flatnonzero(phantom.table.any(axis=(0, 2)))[0])
    below = _lowest_body_row(phantom.body) + 1 - box.y0
    assert (phantom.volume.voxels[:, below + box.y0 :, :] > DENSE_HU).sum() > 0  # table in the input
    assert not (crop.volume.voxels[:, below:, :] > DENSE_HU).any()


def test_body_is_not_cut(phantom) -> None:
    crop = crop_body(phantom.volume)
    z, y, x = np.nonzero(phantom.body)
    assert crop.box.contains(z, y, x)
    box = crop.box
    inside = phantom.body[box.z0 : box.z1, box.y0 : box.y1, box.x0 : box.x1]
    original = phantom.volume.voxels[box.z0 : box.z1, box.y0 : box.y1, box.x0 : box.x1]
    np.testing.assert_array_equal(crop.volume.voxels[inside], original[inside])


def test_margin_in_mm_is_kept_around_the_body(phantom) -> None:
    crop = crop_body(phantom.volume, margin_mm=9.0)  # 6 voxels at 1.5 mm
    _, y, x = np.nonzero(phantom.body)
    assert y.min() - crop.box.y0 >= 6 and crop.box.y1 - 1 - y.max() >= 6
    assert x.min() - crop.box.x0 >= 6 and crop.box.x1 - 1 - x.max() >= 6
    assert crop.box.z0 == 0 and crop.box.z1 == phantom.volume.shape[0]  # z kept whole


def test_crop_updates_origin_and_keeps_spacing(phantom) -> None:
    crop = crop_body(phantom.volume)
    vol = crop.volume
    assert vol.spacing_mm == phantom.volume.spacing_mm
    np.testing.assert_allclose(vol.origin_mm, phantom.volume.index_to_lps(crop.box.start))
    assert vol.shape == crop.box.shape


def test_without_masking_the_table_inside_the_box_stays(phantom) -> None:
    crop = crop_body(phantom.volume, mask_outside=False)
    box = crop.box
    np.testing.assert_array_equal(
        crop.volume.voxels, phantom.volume.voxels[box.z0 : box.z1, box.y0 : box.y1, box.x0 : box.x1]
    )


def test_table_touching_only_through_a_thin_bridge_is_cut_off(phantom_factory) -> None:
    ph = phantom_factory(gap=6)
    vox = ph.volume.voxels.copy()
    bottom = _lowest_body_row(ph.body)
    cx = vox.shape[2] // 2
    vox[:, bottom : bottom + 7, cx] = 40.0  # a one-voxel-wide strap from the back to the table
    crop = crop_body(ph.volume.with_voxels(vox))
    below = bottom + 1 - crop.box.y0
    assert not (crop.volume.voxels[:, below + 3 :, :] > DENSE_HU).any()


def test_all_air_keeps_the_full_field_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    air = Volume(np.full((6, 32, 32), -1000.0, np.float32), spacing_mm=(2.0, 1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="ctcovid.preprocess.body"):
        crop = crop_body(air)
    assert not crop.found
    assert crop.warning is not None and "no body found" in crop.warning
    assert crop.box.shape == air.shape
    np.testing.assert_array_equal(crop.volume.voxels, air.voxels)
    assert "no body found" in caplog.text


def test_display_units_slice_images_are_cropped_with_the_display_threshold(phantom) -> None:
    # What an 8-bit PNG export of the same scan in the lung window looks like.
    display = np.round(apply_window(phantom.volume.voxels, -600.0, 1500.0) * 255.0)
    vol = Volume(display, units=Units.DISPLAY, spacing_known=False)
    crop = crop_body(vol)
    assert crop.found
    z, y, x = np.nonzero(phantom.body)
    assert crop.box.contains(z, y, x)
    below = _lowest_body_row(phantom.body) + 1 - crop.box.y0
    assert crop.volume.voxels[:, below:, :].max() < 100.0  # the table (255 in this window) is gone
    assert crop.volume.voxels[:, below:, :].min() == 0.0  # air in display units


def test_find_body_works_on_a_coarse_grid(phantom) -> None:
    body = find_body(phantom.volume.voxels, phantom.volume.spacing_mm)
    assert body.stride == (1, 2, 2)  # ~3 mm voxels from 2.5 x 1.5 x 1.5 mm
    full = body.sample(*(np.arange(n) for n in phantom.volume.shape))
    assert full.shape == phantom.volume.shape
    assert full[phantom.body].all()
    assert not full[phantom.table].any()


# --- real CT (../shared/data) ------------------------------------------------------------------


def _column_runs(profile: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], profile.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _check_real_scan(volume: Volume, columns: tuple[float, float]) -> None:
    """Check the middle slice column by column over ``columns`` (fractions of the width)."""
    crop = crop_body(volume)
    box = crop.box
    assert crop.found
    k = volume.shape[0] // 2
    w = volume.shape[2]
    n_table = n_body = n_kept = 0
    for x in range(int(columns[0] * w), int(columns[1] * w)):
        runs = _column_runs(volume.voxels[k, :, x] > DENSE_HU)
        if not runs:
            continue
        body_start, body_stop = max(runs, key=lambda r: r[1] - r[0])  # the trunk: longest dense run
        assert box.y0 <= body_start and body_stop <= box.y1, f"body cut by the crop at column {x}"
        kept = crop.volume.voxels[k - box.z0, body_start - box.y0 : body_stop - box.y0, x - box.x0]
        n_body += body_stop - body_start
        n_kept += int(np.sum(kept == volume.voxels[k, body_start:body_stop, x]))
        n_table += sum(stop - start for start, stop in runs if start >= body_stop)
        below = crop.volume.voxels[k - box.z0, body_stop - box.y0 :, x - box.x0]
        assert not (below > DENSE_HU).any(), f"dense voxels left below the body at column {x}"
    assert n_table > 20, "expected the table below the body in the input"
    # The pad under the back can be fused with the skin; everything else of the trunk is kept.
    assert n_kept > 0.95 * n_body
    # Dense structures left in the output: one trunk (plus arms), no slab spanning the width.
    labels, _ = ndi.label(crop.volume.voxels > DENSE_HU)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > 0.9 * sizes.sum()


@pytest.mark.realdata
def test_real_abdomen_dicom_table_removed_and_body_kept(shared_data: Path) -> None:
    from ctcovid.io import load_volume

    folder = shared_data / "abdomen-ct-dicom-j2k"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    _check_real_scan(load_volume(folder), columns=(0.3, 0.7))  # arms lie at the sides


@pytest.mark.realdata
def test_real_abdomen_nifti_table_removed_and_body_kept(shared_data: Path) -> None:
    from ctcovid.io import load_volume

    path = shared_data / "abdomen-ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    _check_real_scan(load_volume(path), columns=(0.05, 0.95))
