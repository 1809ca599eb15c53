"""MetaImage and NRRD reading (ctcovid.io.itk): same grid as NIfTI, any direction, refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ctcovid.errors import MissingExtraError, ScanReadError
from ctcovid.io import load_volume, write_nifti
from ctcovid.types import Volume

sitk = pytest.importorskip("SimpleITK")


def _itk_image(volume: Volume, dtype: type = np.int16) -> sitk.Image:
    """``volume`` as an ITK image: same (z, y, x) array; ITK lists axes (x, y, z), so reverse."""
    img = sitk.GetImageFromArray(volume.voxels.astype(dtype))
    img.SetSpacing(tuple(float(s) for s in volume.spacing_mm[::-1]))
    img.SetOrigin(tuple(float(o) for o in volume.origin_mm))
    img.SetDirection(tuple(float(d) for d in np.asarray(volume.direction)[:, ::-1].ravel()))
    return img


def _write(img: sitk.Image, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def _assert_same(a: Volume, b: Volume) -> None:
    np.testing.assert_array_equal(a.voxels, b.voxels)
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def _oblique(volume: Volume, degrees: float = 20.0) -> Volume:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    tilt = np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(a / 2), -np.sin(a / 2)], [0.0, np.sin(a / 2), np.cos(a / 2)]]
    )
    return Volume(volume.voxels, volume.spacing_mm, volume.origin_mm, direction=tilt @ rot @ volume.direction)


@pytest.mark.parametrize(
    ("name", "compress"),
    [("scan.mha", False), ("scan.mha", True), ("scan.mhd", False), ("scan.mhd", True),
     ("scan.nrrd", False), ("scan.nrrd", True), ("scan.nhdr", False)],
)  # fmt: skip
def test_file_loads_like_the_same_volume_written_as_nifti(tmp_path, volume_factory, name, compress):
    vol = volume_factory()
    reference = load_volume(write_nifti(vol, tmp_path / "ref.nii.gz"))
    loaded = load_volume(_write(_itk_image(vol), tmp_path / name, compress))
    _assert_same(loaded, reference)
    assert loaded.source is not None and loaded.source.path == str(tmp_path / name)
    assert loaded.warnings == []


def test_mhd_reads_its_separate_raw_data_file(tmp_path, volume_factory):
    vol = volume_factory()
    path = _write(_itk_image(vol), tmp_path / "scan.mhd")
    assert "ElementDataFile = scan.raw" in path.read_text()
    _assert_same(load_volume(path), load_volume(write_nifti(vol, tmp_path / "ref.nii")))


@pytest.mark.parametrize("name", ["scan.mha", "scan.nrrd"])
def test_flipped_and_permuted_file_is_reoriented_to_canonical(tmp_path, volume_factory, name):
    vol = volume_factory()
    # ITK's own filters keep every voxel at its physical place while changing the file's axes:
    # the stored array becomes permuted and flipped, the direction matrix says so.
    img = sitk.PermuteAxes(_itk_image(vol), [2, 0, 1])
    img = sitk.Flip(img, [True, False, True], flipAboutOrigin=False)
    assert not np.allclose(np.asarray(img.GetDirection()).reshape(3, 3), np.asarray(vol.direction)[:, ::-1])
    _assert_same(
        load_volume(_write(img, tmp_path / name)), load_volume(write_nifti(vol, tmp_path / "ref.nii"))
    )


@pytest.mark.parametrize("name", ["scan.mha", "scan.nrrd"])
def test_oblique_flipped_file_matches_the_nifti_reader(tmp_path, volume_factory, name):
    vol = _oblique(volume_factory())
    img = sitk.Flip(sitk.PermuteAxes(_itk_image(vol), [1, 2, 0]), [False, True, True], flipAboutOrigin=False)
    loaded = load_volume(_write(img, tmp_path / name))
    _assert_same(loaded, load_volume(write_nifti(vol, tmp_path / "ref.nii")))
    np.testing.assert_allclose(loaded.direction, vol.direction, atol=1e-6)  # obliqueness kept


def test_nrrd_in_ras_space_gives_the_same_volume_as_lps(tmp_path, volume_factory):
    vol = volume_factory()
    d, h, w = vol.shape
    # Written by hand: RAS space (3D Slicer's default), so x and y world components are negated.
    steps = (np.asarray(vol.direction) * vol.spacing_mm)[:, ::-1].T * (-1.0, -1.0, 1.0)  # row: index axis
    origin = np.asarray(vol.origin_mm) * (-1.0, -1.0, 1.0)
    vec = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    (tmp_path / "scan.raw").write_bytes(vol.voxels.astype("<i2").tobytes())
    header = tmp_path / "scan.nhdr"
    header.write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
        f"sizes: {w} {h} {d}\nspace directions: {' '.join(vec(r) for r in steps)}\n"
        f"kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: {vec(origin)}\n"
        "data file: scan.raw\n"
    )
    _assert_same(load_volume(header), load_volume(write_nifti(vol, tmp_path / "ref.nii")))


def test_uint8_file_loads_exactly_and_warns_it_is_not_hu(tmp_path):
    vox = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    vol = Volume(vox, spacing_mm=(2.0, 1.0, 1.0))
    loaded = load_volume(_write(_itk_image(vol, np.uint8), tmp_path / "mask.mha"))
    np.testing.assert_array_equal(loaded.voxels, vox)
    assert loaded.voxels.dtype == np.float32
    assert len(loaded.warnings) == 1
    assert "uint8" in loaded.warnings[0] and "HU" in loaded.warnings[0]


@pytest.mark.parametrize(("name", "data_name"), [("scan.mhd", "scan.raw"), ("scan.nhdr", "scan.raw")])
def test_missing_data_file_is_named_in_the_error(tmp_path, volume_factory, name, data_name):
    path = _write(_itk_image(volume_factory()), tmp_path / name)
    (tmp_path / data_name).unlink()
    with pytest.raises(ScanReadError, match="does not exist") as err:
        load_volume(path)
    assert str(path) in str(err.value)
    assert str(tmp_path / data_name) in str(err.value)


def test_missing_zraw_of_compressed_mhd_is_named(tmp_path, volume_factory):
    path = _write(_itk_image(volume_factory()), tmp_path / "scan.mhd", compress=True)
    (tmp_path / "scan.zraw").unlink()
    with pytest.raises(ScanReadError, match="scan.zraw"):
        load_volume(path)


def test_truncated_raw_file_raises_before_reading(tmp_path, volume_factory):
    path = _write(_itk_image(volume_factory()), tmp_path / "scan.mhd")
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ScanReadError, match="promises .* bytes") as err:
        load_volume(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "header",
    [b"this is not a header\n", b"NDims = 3\nDimSize = 4 4\nElementDataFile = LOCAL\n",
     b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"],
)  # fmt: skip
def test_corrupt_mha_header_raises_naming_the_file(tmp_path, header):
    path = tmp_path / "bad.mha"
    path.write_bytes(header)
    with pytest.raises(ScanReadError) as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_corrupt_nrrd_magic_raises_naming_the_file(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_bytes(b"NOTNRRD\ntype: short\n\n" + bytes(100))
    with pytest.raises(ScanReadError, match="not a NRRD file") as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_2d_image_is_refused_as_not_3d(tmp_path):
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(path))
    with pytest.raises(ScanReadError, match="not a 3D volume") as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_vector_image_is_refused(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 5, 6, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(ScanReadError, match="3 components"):
        load_volume(path)


def test_folder_holding_an_mhd_points_at_it(tmp_path, volume_factory):
    _write(_itk_image(volume_factory()), tmp_path / "scan.mhd")
    with pytest.raises(ScanReadError, match=r"scan\.mhd: pass that file"):
        load_volume(tmp_path)


def test_missing_simpleitk_names_the_extra_to_install(tmp_path, volume_factory, monkeypatch):
    path = _write(_itk_image(volume_factory()), tmp_path / "scan.mha")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # makes `import SimpleITK` fail
    with pytest.raises(MissingExtraError, match=r"pip install 'ctcovid\[itk\]'"):
        load_volume(path)
