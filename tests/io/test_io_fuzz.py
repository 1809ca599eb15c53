"""Fuzz: mutated DICOM, PNG, NIfTI, MetaImage and NRRD bytes either load or raise ScanReadError, nothing else."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctcovid.errors import ScanReadError
from ctcovid.io import CANONICAL_DIRECTION, load_volume, write_dicom_series, write_nifti, write_slices
from ctcovid.types import Volume

_SETTINGS = settings(
    max_examples=60,
    deadline=None,  # file I/O timing varies on shared machines
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples every run: a failure here reproduces
)


def _tiny_volume() -> Volume:
    vox = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5) * 10 - 1000
    return Volume(vox, spacing_mm=(2.0, 0.5, 0.5), direction=CANONICAL_DIRECTION)


def _bytes_of(write: Callable[[Path], Path]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write(Path(d)).read_bytes()


_DICOM = _bytes_of(lambda d: write_dicom_series(_tiny_volume(), d)[0])
_PNG = _bytes_of(lambda d: write_slices(_tiny_volume(), d)[0])
_NIFTI = _bytes_of(lambda d: write_nifti(_tiny_volume(), d / "v.nii"))


def _itk_bytes(name: str) -> bytes:
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.GetImageFromArray(_tiny_volume().voxels)
    image.SetSpacing((0.5, 0.5, 2.0))
    return _bytes_of(lambda d: (sitk.WriteImage(image, str(d / name)), d / name)[1])


@st.composite
def _mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _assert_loads_or_scan_read_error(path: Path) -> None:
    try:
        vol = load_volume(path)
    except ScanReadError as e:
        assert str(path) in str(e) or str(path.parent) in str(e)
        return
    assert vol.voxels.ndim == 3 and vol.voxels.dtype == np.float32


@_SETTINGS
@given(data=_mutated(_DICOM))
def test_mutated_dicom_only_raises_scan_read_error(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "slice").write_bytes(data)
        _assert_loads_or_scan_read_error(Path(d))


@_SETTINGS
@given(data=_mutated(_PNG))
def test_mutated_png_only_raises_scan_read_error(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "0.png").write_bytes(_PNG)
        (Path(d) / "1.png").write_bytes(data)
        _assert_loads_or_scan_read_error(Path(d))


@_SETTINGS
@given(data=_mutated(_NIFTI))
def test_mutated_nifti_only_raises_scan_read_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.nii"
        path.write_bytes(data)
        _assert_loads_or_scan_read_error(path)


@pytest.mark.parametrize("original", [_DICOM, _NIFTI], ids=["dicom", "nifti"])
def test_header_only_truncation_raises_scan_read_error(tmp_path, original):
    path = tmp_path / ("v.nii" if original is _NIFTI else "slice")
    path.write_bytes(original[:200])
    with pytest.raises(ScanReadError):
        load_volume(path if original is _NIFTI else tmp_path)


@pytest.mark.parametrize("name", ["v.mha", "v.nrrd"])
def test_mutated_metaimage_and_nrrd_only_raise_scan_read_error(tmp_path, name):
    original = _itk_bytes(name)

    @_SETTINGS
    @given(data=_mutated(original))
    def check(data: bytes) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        _assert_loads_or_scan_read_error(path)

    check()
