"""Writers: every format written by ctcovid.io.write reads back through load_volume unchanged."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctcovid.io import load_volume, write_dicom_series, write_nifti, write_slices
from ctcovid.types import ScanFormat, Units, Volume


def assert_same_geometry(a: Volume, b: Volume) -> None:
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle", "jpeg2000"])
def test_dicom_round_trip_keeps_voxels_and_geometry(tmp_path, volume_factory, transfer_syntax):
    vol = volume_factory(shape=(4, 40, 36))  # openjpeg needs >= 32 pixels per side
    paths = write_dicom_series(vol, tmp_path, transfer_syntax=transfer_syntax)
    assert len(paths) == vol.shape[0]
    back = load_volume(tmp_path)
    assert back.source is not None and back.source.format is ScanFormat.DICOM
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert_same_geometry(back, vol)
    assert back.source.warnings == [] and back.source.skipped_files == []


def test_dicom_writer_rounds_fractional_hu_to_nearest_integer(tmp_path, volume_factory):
    vol = volume_factory()
    frac = vol.with_voxels(vol.voxels + 0.4)
    write_dicom_series(frac, tmp_path)
    np.testing.assert_array_equal(load_volume(tmp_path).voxels, vol.voxels)


def test_dicom_writer_stores_int16_with_rescale_and_geometry_tags(tmp_path, volume_factory):
    vol = volume_factory()
    paths = write_dicom_series(vol, tmp_path, patient_id="P7", series_description="phantom")
    ds = pydicom.dcmread(paths[1])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.pixel_array.dtype == np.int16
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [0.75, 0.8]
    # slice 1 sits one z step above the origin (LPS: +z is superior)
    assert [float(v) for v in ds.ImagePositionPatient] == [-100.0, -120.5, 42.5]
    assert ds.PatientID == "P7" and ds.SeriesDescription == "phantom"


def test_dicom_writer_uids_are_deterministic_and_content_dependent(tmp_path, volume_factory):
    a = write_dicom_series(volume_factory(seed=1), tmp_path / "a")
    b = write_dicom_series(volume_factory(seed=1), tmp_path / "b")
    c = write_dicom_series(volume_factory(seed=2), tmp_path / "c")
    uid = [pydicom.dcmread(p[0]).SeriesInstanceUID for p in (a, b, c)]
    assert uid[0] == uid[1] != uid[2]
    assert [p.name for p in a] == [p.name for p in b]


def test_dicom_writer_file_names_do_not_give_slice_order(tmp_path, volume_factory):
    paths = write_dicom_series(volume_factory(shape=(12, 8, 8)), tmp_path)
    names = [p.name for p in paths]
    assert sorted(names) != names
    assert not any(p.stem.isdigit() for p in paths)


def test_dicom_series_is_readable_by_simpleitk(tmp_path, volume_factory):
    vol = volume_factory()
    write_dicom_series(vol, tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    img = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.voxels)  # ITK array is (z, y, x) too
    np.testing.assert_allclose(img.GetSpacing()[::-1], vol.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), vol.origin_mm, atol=1e-4)


def test_dicom_writer_refuses_unknown_transfer_syntax(tmp_path, volume_factory):
    with pytest.raises(ValueError, match="explicit_le"):
        write_dicom_series(volume_factory(), tmp_path, transfer_syntax="jpeg9000")


def test_dicom_writer_explains_jpeg2000_size_limit(tmp_path, volume_factory):
    with pytest.raises(ValueError, match="32x32"):
        write_dicom_series(volume_factory(shape=(2, 16, 40)), tmp_path, transfer_syntax="jpeg2000")


def test_dicom_writer_refuses_values_outside_int16(tmp_path, volume_factory):
    vol = volume_factory()
    vol.voxels[0, 0, 0] = 40000.0
    with pytest.raises(ValueError, match="int16"):
        write_dicom_series(vol, tmp_path)


def test_nifti_round_trip_keeps_voxels_and_geometry(tmp_path, volume_factory):
    vol = volume_factory()
    path = write_nifti(vol, tmp_path / "scan.nii.gz")
    back = load_volume(path)
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert_same_geometry(back, vol)


def test_nifti_round_trip_keeps_fractional_values_and_oblique_geometry(tmp_path, volume_factory):
    vol = volume_factory()
    vol = vol.with_voxels(vol.voxels + 0.25)
    t = np.deg2rad(10)
    tilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    vol.direction = tilt @ vol.direction
    back = load_volume(write_nifti(vol, tmp_path / "scan.nii"))
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert_same_geometry(back, vol)


def test_nifti_writer_is_placed_like_the_dicom_by_simpleitk(tmp_path, volume_factory):
    vol = volume_factory()
    img = sitk.ReadImage(str(write_nifti(vol, tmp_path / "scan.nii.gz")))
    np.testing.assert_allclose(img.GetOrigin(), vol.origin_mm, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.voxels)


def test_slices_round_trip_applies_the_window(tmp_path, volume_factory):
    vol = volume_factory()
    paths = write_slices(vol, tmp_path, window_hu=(-600.0, 1500.0))
    assert [p.name for p in paths] == [f"{k}.png" for k in range(vol.shape[0])]
    back = load_volume(tmp_path)
    assert back.units is Units.DISPLAY and back.spacing_known is False
    expected = np.clip(np.rint((vol.voxels.astype(np.float64) + 1350.0) * 255.0 / 1500.0), 0, 255)
    np.testing.assert_array_equal(back.voxels, expected)


def test_slices_writer_numbers_from_start_index_without_padding(tmp_path, volume_factory):
    paths = write_slices(volume_factory(shape=(3, 4, 4)), tmp_path, start_index=9, ext="jpg")
    assert [p.name for p in paths] == ["9.jpg", "10.jpg", "11.jpg"]


def test_slices_writer_keeps_display_values(tmp_path):
    vox = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    write_slices(Volume(vox, units=Units.DISPLAY), tmp_path)
    np.testing.assert_array_equal(load_volume(tmp_path).voxels, vox)
