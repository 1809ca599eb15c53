"""NIfTI reading: reorientation to (S, P, L) on (z, y, x), RAS -> LPS geometry, scaling, refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctcovid.errors import ScanReadError
from ctcovid.io import load_volume


def _save(tmp_path, data, affine, name="scan.nii.gz", **header):
    img = nib.Nifti1Image(data, affine)
    for k, v in header.items():
        img.header[k] = v
    path = tmp_path / name
    nib.save(img, path)
    return path


def test_ras_file_is_reoriented_to_superior_posterior_left(tmp_path):
    # file array (i, j, k) with a diagonal RAS affine: +i points to patient Right, +j Anterior, +k
    # Superior; so voxel (0, 0, 0) is the most left, posterior and inferior one.
    data = np.zeros((4, 5, 6), dtype=np.int16)
    data[0, 0, 0] = 100
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    vol = load_volume(_save(tmp_path, data, affine))
    assert vol.shape == (6, 5, 4)  # (z, y, x)
    assert vol.spacing_mm == (4.0, 3.0, 2.0)
    # axis 0 ascends superior: z index 0 stays first; axis 1 runs to posterior: RAS j=0 (most
    # posterior) becomes the last row; axis 2 runs to the left: RAS i=0 (leftmost) is the last column.
    assert vol.voxels[0, -1, -1] == 100
    assert vol.voxels.sum() == 100
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    # LPS position of voxel [0, 0, 0] is RAS (x=10+2*3, y=20+3*4, z=30) with x, y negated
    np.testing.assert_allclose(vol.origin_mm, (-16.0, -32.0, 30.0))
    # the marked voxel keeps its physical place: RAS (10, 20, 30) = LPS (-10, -20, 30)
    np.testing.assert_allclose(vol.index_to_lps((0, 4, 3)), (-10.0, -20.0, 30.0))


def test_las_file_gives_the_same_volume_as_ras(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    las = ras.copy()
    las[0, 0] = -2.0
    las[0, 3] = 2.0 * 3  # same physical box: flipped x axis starting at the other end
    a = load_volume(_save(tmp_path, data, ras, "ras.nii"))
    b = load_volume(_save(tmp_path, data[::-1].copy(), las, "las.nii"))
    np.testing.assert_array_equal(a.voxels, b.voxels)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm)


def test_scl_slope_and_inter_are_applied(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = _save(tmp_path, data, np.eye(4), scl_slope=2.0, scl_inter=-1024.0)
    vol = load_volume(path)
    assert vol.voxels.dtype == np.float32
    assert vol.voxels.min() == -1024.0 and vol.voxels.max() == 23 * 2 - 1024.0


def test_trailing_singleton_dimension_is_squeezed(tmp_path):
    vol = load_volume(_save(tmp_path, np.zeros((3, 4, 5, 1), np.float32), np.eye(4)))
    assert vol.shape == (5, 4, 3)


def test_4d_nifti_is_refused_naming_the_path(tmp_path):
    path = _save(tmp_path, np.zeros((3, 4, 5, 2), np.float32), np.eye(4))
    with pytest.raises(ScanReadError, match="not a 3D volume") as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_truncated_nifti_raises_scan_read_error(tmp_path):
    path = _save(tmp_path, np.ones((20, 20, 20), np.float32), np.eye(4), name="scan.nii")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ScanReadError, match="scan.nii"):
        load_volume(path)


def test_corrupt_gzip_raises_scan_read_error(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    with pytest.raises(ScanReadError, match="not a readable NIfTI"):
        load_volume(path)
