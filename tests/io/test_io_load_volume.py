"""load_volume dispatch: bad inputs raise ScanReadError naming the path; formats agree."""

from __future__ import annotations

import numpy as np
import pytest

from ctcovid.errors import ScanReadError
from ctcovid.io import load_volume, write_dicom_series, write_nifti, write_slices


def test_missing_path_raises_naming_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ScanReadError, match="no such file or folder") as err:
        load_volume(missing)
    assert str(missing) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_empty_folder_raises(tmp_path):
    with pytest.raises(ScanReadError, match="folder is empty"):
        load_volume(tmp_path)


def test_folder_of_subfolders_suggests_one_series(tmp_path):
    (tmp_path / "series1").mkdir()
    with pytest.raises(ScanReadError, match="series1"):
        load_volume(tmp_path)


def test_folder_without_scan_files_raises(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ScanReadError) as err:
        load_volume(tmp_path)
    assert str(tmp_path) in str(err.value) and "readme.txt" in str(err.value)


def test_folder_holding_a_nifti_points_at_it(tmp_path, volume_factory):
    write_nifti(volume_factory(), tmp_path / "scan.nii.gz")
    with pytest.raises(ScanReadError, match=r"scan\.nii\.gz: pass that file"):
        load_volume(tmp_path)


def test_corrupt_single_dicom_file_raises(tmp_path):
    bad = tmp_path / "slice.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    with pytest.raises(ScanReadError) as err:
        load_volume(bad)
    assert str(tmp_path) in str(err.value)


def test_unknown_file_format_lists_supported_ones(tmp_path):
    f = tmp_path / "scan.vtk"
    f.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(ScanReadError, match="supported:"):
        load_volume(f)


def test_dicom_folder_with_a_thumbnail_reads_the_dicom(tmp_path, volume_factory):
    vol = volume_factory()
    write_dicom_series(vol, tmp_path)
    write_slices(vol.with_voxels(vol.voxels[:1]), tmp_path, ext="jpg")
    np.testing.assert_array_equal(load_volume(tmp_path).voxels, vol.voxels)


def test_dicom_nifti_and_png_give_the_same_grid_and_orientation(tmp_path, volume_factory):
    vol = volume_factory(shape=(6, 20, 16))
    write_dicom_series(vol, tmp_path / "dicom")
    write_nifti(vol, tmp_path / "scan.nii.gz")
    window = (0.0, 4000.0)  # wide enough that only the 1500 HU block reaches the top grey level
    write_slices(vol, tmp_path / "png", window_hu=window)
    dcm, nii, png = (load_volume(tmp_path / p) for p in ("dicom", "scan.nii.gz", "png"))
    assert dcm.shape == nii.shape == png.shape == vol.shape
    np.testing.assert_allclose(dcm.direction, nii.direction)
    np.testing.assert_allclose(dcm.direction, png.direction)
    np.testing.assert_allclose(dcm.origin_mm, nii.origin_mm, atol=1e-4)
    # PNG holds windowed display values: window the HU volumes the same way and compare
    lo = window[0] - window[1] / 2
    for hu in (dcm, nii):
        expected = np.clip(np.rint((hu.voxels.astype(np.float64) - lo) * 255.0 / window[1]), 0, 255)
        np.testing.assert_array_equal(png.voxels, expected)
    # the bright block sits superior / anterior / patient-right in all three: no flip anywhere
    for v in (dcm, nii, png):
        block = v.voxels >= v.voxels.max()
        k, j, i = np.argwhere(block).mean(axis=0)
        assert k > vol.shape[0] / 2 and j < vol.shape[1] / 2 and i < vol.shape[2] / 2
