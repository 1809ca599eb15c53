"""NumPy inputs: .npy and .npz with and without geometry keys; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from ctcovid.errors import ScanReadError
from ctcovid.io import CANONICAL_DIRECTION, load_volume
from ctcovid.types import ScanFormat


def test_npy_loads_as_float32_with_unknown_spacing(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "v.npy", arr)
    vol = load_volume(tmp_path / "v.npy")
    assert vol.voxels.dtype == np.float32
    np.testing.assert_array_equal(vol.voxels, arr)
    assert not vol.spacing_known and vol.spacing_mm == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.direction, CANONICAL_DIRECTION)
    assert vol.source is not None and vol.source.format is ScanFormat.NUMPY


@pytest.mark.parametrize("key", ["volume", "image", "anything"])
def test_npz_finds_the_voxel_array_and_spacing(tmp_path, key):
    arr = np.ones((2, 3, 4), dtype=np.float32)
    np.savez(tmp_path / "v.npz", **{key: arr, "spacing_mm": np.array([2.0, 0.5, 0.6])})
    vol = load_volume(tmp_path / "v.npz")
    assert vol.shape == (2, 3, 4) and vol.spacing_mm == (2.0, 0.5, 0.6) and vol.spacing_known


def test_npz_with_origin_and_direction(tmp_path):
    d = np.eye(3)
    np.savez(tmp_path / "v.npz", volume=np.zeros((2, 2, 2)), origin_mm=np.array([1.0, 2.0, 3.0]), direction=d)
    vol = load_volume(tmp_path / "v.npz")
    assert vol.origin_mm == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(vol.direction, d)


def test_npz_with_ambiguous_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "v.npz", a=np.zeros((2, 2, 2)), b=np.zeros((2, 2, 2)))
    with pytest.raises(ScanReadError, match="'volume' or 'image'"):
        load_volume(tmp_path / "v.npz")


@pytest.mark.parametrize("shape", [(4, 4), (2, 2, 2, 2)])
def test_non_3d_array_is_refused_naming_the_path(tmp_path, shape):
    np.save(tmp_path / "v.npy", np.zeros(shape))
    with pytest.raises(ScanReadError, match="not a 3D volume") as err:
        load_volume(tmp_path / "v.npy")
    assert "v.npy" in str(err.value)


def test_object_array_is_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "v.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ScanReadError, match="not a readable NumPy file"):
        load_volume(tmp_path / "v.npy")


def test_bad_spacing_key_is_refused(tmp_path):
    np.savez(tmp_path / "v.npz", volume=np.zeros((2, 2, 2)), spacing_mm=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ScanReadError, match="spacing_mm"):
        load_volume(tmp_path / "v.npz")


def test_npz_member_promising_more_data_than_it_holds_is_refused(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, volume=np.zeros((2, 2, 2), dtype=np.float32))
    raw = bytearray(path.read_bytes())
    at = raw.find(b"(2, 2, 2)")
    raw[at : at + 9] = b"(9, 9, 9)"  # same length, uncompressed npz: the header is stored verbatim
    path.write_bytes(bytes(raw))
    with pytest.raises(ScanReadError, match="not a readable NumPy file"):
        load_volume(path)
