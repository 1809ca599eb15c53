"""Real scans from ../shared/data (see its README for the facts asserted here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctcovid.io import CANONICAL_DIRECTION, load_volume
from ctcovid.types import Volume

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def chest(shared_data: Path) -> Volume:
    return load_volume(shared_data / "chest-ct-dicom-jpegls")


@pytest.fixture(scope="module")
def abdomen_j2k(shared_data: Path) -> Volume:
    return load_volume(shared_data / "abdomen-ct-dicom-j2k")


@pytest.fixture(scope="module")
def abdomen_nifti(shared_data: Path) -> Volume:
    return load_volume(shared_data / "abdomen-ct.nii.gz")


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _bone_behind_body(vol: Volume) -> bool:
    """Spine and table (> 300 HU) lie posterior to the body's centre: axis 1 runs anterior -> posterior."""
    j = np.arange(vol.shape[1])[None, :, None]
    body, bone = vol.voxels > -300, vol.voxels > 300
    return float((bone * j).sum() / bone.sum()) > float((body * j).sum() / body.sum()) + 5


def test_chest_jpeg_lossless_matches_the_readme(chest):
    assert chest.shape == (167, 512, 512)
    assert chest.spacing_mm == pytest.approx((2.0, 0.75, 0.75))
    assert (chest.voxels.min(), chest.voxels.max()) == (-1024.0, 1708.0)
    assert chest.voxels[:, :8, :8].max() == -1024.0  # corners: air / outside the field of view
    np.testing.assert_allclose(chest.direction, CANONICAL_DIRECTION)
    assert (
        chest.source is not None
        and chest.source.skipped_files == []
        and chest.source.patient_id == "normal002"
    )
    assert _bone_behind_body(chest)


def test_chest_slices_follow_their_positions(chest, shared_data):
    folder = shared_data / "chest-ct-dicom-jpegls"
    headers = [
        (float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]), p)
        for p in folder.iterdir()
    ]
    headers.sort()
    z = np.array([h[0] for h in headers])
    assert np.all(np.diff(z) > 0)  # strictly increasing, no duplicates
    assert chest.origin_mm[2] == pytest.approx(z[0])
    for k in (0, 83, 166):
        ds = pydicom.dcmread(headers[k][1])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(chest.voxels[k], hu)


def test_chest_matches_simpleitk(chest, shared_data):
    img = _sitk_series(shared_data / "chest-ct-dicom-jpegls")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), chest.voxels)
    np.testing.assert_allclose(img.GetSpacing()[::-1], chest.spacing_mm)
    np.testing.assert_allclose(img.GetOrigin(), chest.origin_mm)


def test_abdomen_jpeg2000_matches_the_readme_and_simpleitk(abdomen_j2k, shared_data):
    assert abdomen_j2k.shape == (20, 512, 512)
    assert abdomen_j2k.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert (abdomen_j2k.voxels.min(), abdomen_j2k.voxels.max()) == (-1024.0, 1839.0)
    assert abdomen_j2k.voxels[:, :8, :8].max() == -1024.0
    assert _bone_behind_body(abdomen_j2k)  # patient table and spine are posterior
    img = _sitk_series(shared_data / "abdomen-ct-dicom-j2k")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), abdomen_j2k.voxels)
    np.testing.assert_allclose(img.GetOrigin(), abdomen_j2k.origin_mm)


def test_abdomen_nifti_is_reoriented_to_lps_canonical(abdomen_nifti, shared_data):
    # the file stores (x, y, z) = (122, 101, 112) in RAS; canonical (z, y, x) flips y and x
    assert abdomen_nifti.shape == (112, 101, 122)
    assert abdomen_nifti.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    assert (abdomen_nifti.voxels.min(), abdomen_nifti.voxels.max()) == (-1207.0, 3382.0)
    np.testing.assert_allclose(abdomen_nifti.direction, CANONICAL_DIRECTION)
    assert _bone_behind_body(abdomen_nifti)
    assert -1100 < abdomen_nifti.voxels[:, :4, :4].mean() < -900  # air in the corners
    # SimpleITK reads NIfTI in LPS with direction diag(-1, -1, 1): its y and x run A and R
    img = sitk.ReadImage(str(shared_data / "abdomen-ct.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img)[:, ::-1, ::-1], abdomen_nifti.voxels)
    last = np.array(img.TransformIndexToPhysicalPoint([s - 1 for s in img.GetSize()[:2]] + [0]))
    np.testing.assert_allclose(abdomen_nifti.index_to_lps((0, 0, 0)), last, atol=1e-3)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the chest files' UIDs (see README)
@pytest.mark.parametrize("folder", ["chest-ct-dicom-jpegls", "abdomen-ct-dicom-j2k"])
def test_fast_header_walker_agrees_with_pydicom_on_real_files(shared_data, folder, monkeypatch):
    from ctcovid.io import dicom_header as dh

    def as_dict(h: object) -> dict[str, object]:
        return {k: (None if v is None else np.asarray(v).tolist()) for k, v in vars(h).items()}

    paths = sorted((shared_data / folder).iterdir())
    fast = [as_dict(dh.read_header(p)) for p in paths]
    for p in paths:
        dh._fast_fields(p)  # real scanner headers (private tags, sequences) stay on the fast path

    def refuse(p: Path) -> None:
        raise dh._Unsupported("test: use pydicom")

    monkeypatch.setattr(dh, "_fast_fields", refuse)
    assert fast == [as_dict(dh.read_header(p)) for p in paths]
