"""DICOM series reading: order, series choice, damaged folders, geometry warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctcovid.errors import ScanReadError
from ctcovid.io import is_dicom_file, load_volume, read_dicom_series, write_dicom_series


def _edit(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_slices_are_sorted_by_position_not_name_or_instance_number(tmp_path, volume_factory):
    vol = volume_factory(shape=(9, 8, 10))
    paths = write_dicom_series(vol, tmp_path / "w")
    rng = np.random.default_rng(3)
    out = tmp_path / "shuffled"
    out.mkdir()
    for new_index, k in enumerate(rng.permutation(len(paths))):
        # file name and InstanceNumber both claim the shuffled order
        target = out / f"IMG{new_index:04d}"
        shutil.copy(paths[k], target)
        _edit(target, InstanceNumber=new_index + 1)
    back = load_volume(out)
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    np.testing.assert_allclose(back.origin_mm, vol.origin_mm)


def test_descending_positions_are_read_in_ascending_order(tmp_path, volume_factory):
    vol = volume_factory(shape=(5, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    top = np.array(vol.origin_mm)
    for k, p in enumerate(paths):
        # positions now descend with k: the reader must flip the stack
        _edit(p, ImagePositionPatient=[f"{top[0]}", f"{top[1]}", f"{top[2] - 2.5 * k}"])
    back = load_volume(tmp_path)
    np.testing.assert_array_equal(back.voxels, vol.voxels[::-1])
    assert back.origin_mm[2] == pytest.approx(top[2] - 2.5 * 4)


def test_largest_series_is_chosen_and_the_other_reported(tmp_path, volume_factory):
    big, small = volume_factory(shape=(6, 8, 8), seed=1), volume_factory(shape=(3, 8, 8), seed=2)
    write_dicom_series(big, tmp_path, series_description="big")
    small_paths = write_dicom_series(small, tmp_path, series_description="localizer")
    small_uid = pydicom.dcmread(small_paths[0]).SeriesInstanceUID
    back = load_volume(tmp_path)
    assert back.shape == big.shape
    assert back.source is not None
    assert len(back.source.other_series) == 1
    assert back.source.other_series[0].startswith(f"{small_uid}: 3 files")
    picked = load_volume(tmp_path, series_uid=small_uid)
    np.testing.assert_array_equal(picked.voxels, small.voxels)
    assert picked.source is not None and picked.source.series_uid == small_uid


def test_unknown_series_uid_lists_the_available_ones(tmp_path, volume_factory):
    paths = write_dicom_series(volume_factory(shape=(2, 8, 8)), tmp_path)
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    with pytest.raises(ScanReadError, match=uid) as err:
        load_volume(tmp_path, series_uid="1.2.3.4")
    assert str(tmp_path) in str(err.value) and "1.2.3.4" in str(err.value)


def test_single_file_path_reads_its_series_from_the_folder(tmp_path, volume_factory):
    vol = volume_factory(shape=(4, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    np.testing.assert_array_equal(load_volume(paths[2]).voxels, vol.voxels)


def test_missing_slice_is_warned(tmp_path, volume_factory):
    paths = write_dicom_series(volume_factory(shape=(8, 8, 8)), tmp_path)
    paths[4].unlink()
    back = load_volume(tmp_path)
    assert back.shape[0] == 7
    assert back.spacing_mm[0] == pytest.approx(2.5)
    assert any("missing slices" in w and "5.00 mm" in w for w in back.warnings)


def test_uneven_spacing_is_warned(tmp_path, volume_factory):
    vol = volume_factory(shape=(6, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    x, y, z = vol.origin_mm
    _edit(paths[3], ImagePositionPatient=[f"{x}", f"{y}", f"{z + 2.5 * 3 + 0.8}"])
    back = load_volume(tmp_path)
    assert any("uneven slice spacing" in w for w in back.warnings)
    assert not any("missing" in w for w in back.warnings)


def test_duplicate_positions_are_dropped_and_warned(tmp_path, volume_factory):
    vol = volume_factory(shape=(5, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    dup = tmp_path / "copy_of_slice_2"
    shutil.copy(paths[2], dup)
    back = load_volume(tmp_path)
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert back.source is not None
    assert len(back.source.skipped_files) == 1 and "duplicate position" in back.source.skipped_files[0][1]
    assert any("duplicate" in w for w in back.warnings)


def test_broken_and_empty_files_are_skipped_and_named(tmp_path, volume_factory):
    vol = volume_factory(shape=(5, 8, 8))
    write_dicom_series(vol, tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    (tmp_path / "notes.txt").write_text("scanner log")
    back = load_volume(tmp_path)
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert back.source is not None
    names = {Path(p).name for p, _ in back.source.skipped_files}
    assert names == {"empty", "garbage.dcm", "notes.txt"}


def test_truncated_pixel_data_skips_that_slice(tmp_path, volume_factory):
    vol = volume_factory(shape=(5, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    data = paths[-1].read_bytes()
    paths[-1].write_bytes(data[:-40])
    back = load_volume(tmp_path)
    np.testing.assert_array_equal(back.voxels, vol.voxels[:-1])
    assert back.source is not None and [Path(p) for p, _ in back.source.skipped_files] == [paths[-1]]


def test_mixed_slice_sizes_keep_the_majority(tmp_path, volume_factory):
    vol = volume_factory(shape=(5, 8, 8))
    paths = write_dicom_series(vol, tmp_path / "a")
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    other = volume_factory(shape=(1, 6, 6), origin_mm=(-100.0, -120.5, 60.0))
    odd = write_dicom_series(other, tmp_path / "b", series_uid=uid)[0]
    shutil.copy(odd, tmp_path / "a" / "odd_size")
    back = load_volume(tmp_path / "a")
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert back.source is not None
    assert [(Path(p).name, "size" in r) for p, r in back.source.skipped_files] == [("odd_size", True)]


def test_rescale_slope_and_intercept_give_hu(tmp_path, volume_factory):
    vol = volume_factory(shape=(2, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    _edit(paths[1], RescaleSlope="2", RescaleIntercept="-1000")
    back = load_volume(tmp_path)
    stored = vol.voxels[1] + 1024
    np.testing.assert_array_equal(back.voxels[1], stored * 2 - 1000)
    np.testing.assert_array_equal(back.voxels[0], vol.voxels[0])


def test_files_without_extension_or_preamble_are_recognised(tmp_path, volume_factory):
    vol = volume_factory(shape=(3, 8, 8))
    paths = write_dicom_series(vol, tmp_path / "w")
    out = tmp_path / "noext"
    out.mkdir()
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        del ds.file_meta
        ds.preamble = None
        # no preamble, no 'DICM', no file meta, implicit VR: an old ACR-NEMA style file
        pydicom.dcmwrite(out / f"x{k}", ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert (out / f"x{k}").read_bytes()[128:132] != b"DICM"
    assert is_dicom_file(out / "x0")
    np.testing.assert_array_equal(load_volume(out).voxels, vol.voxels)
    np.testing.assert_array_equal(load_volume(out / "x1").voxels, vol.voxels)


def test_sagittal_series_keeps_its_geometry(tmp_path, volume_factory):
    vol = volume_factory(shape=(4, 10, 8))
    # row cosine +y (posterior), column cosine -z (rows run downwards): the slice normal
    # row x column is -x, so axis 0 runs towards patient right.
    vol.direction = np.column_stack([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    write_dicom_series(vol, tmp_path)
    back = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)
    np.testing.assert_allclose(back.index_to_lps((3, 9, 7)), vol.index_to_lps((3, 9, 7)), atol=1e-4)


def test_folder_without_dicom_images_raises_naming_the_path(tmp_path):
    (tmp_path / "a").write_bytes(b"\x00" * 300)
    (tmp_path / "b").write_bytes(b"hello")
    with pytest.raises(ScanReadError, match="no readable DICOM image") as err:
        load_volume(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_jpegls_writer_needs_an_encoder_or_round_trips(tmp_path, volume_factory):
    vol = volume_factory(shape=(2, 8, 8))
    try:
        write_dicom_series(vol, tmp_path, transfer_syntax="jpegls")
    except ValueError as e:
        assert "pyjpegls" in str(e)
        return
    np.testing.assert_array_equal(load_volume(tmp_path).voxels, vol.voxels)


def test_without_positions_slices_follow_instance_number_and_warn(tmp_path, volume_factory):
    vol = volume_factory(shape=(4, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    back = load_volume(tmp_path)
    np.testing.assert_array_equal(back.voxels, vol.voxels)
    assert back.spacing_mm[0] == pytest.approx(2.5)  # from SliceThickness
    assert any("InstanceNumber" in w for w in back.warnings)


def test_unsigned_12_bit_pixels_ignore_garbage_high_bits(tmp_path, volume_factory):
    vol = volume_factory(shape=(2, 8, 8))
    paths = write_dicom_series(vol, tmp_path)
    for p in paths:
        ds = pydicom.dcmread(p)
        stored = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.uint16)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.PixelData = (stored | 0xF000).tobytes()  # overlay-style junk above bit 11
        ds.save_as(p)
    back = load_volume(tmp_path)
    expected = ((vol.voxels + 1024).astype(np.int64) & 0x0FFF) - 1024
    np.testing.assert_array_equal(back.voxels, expected)


def _header_via(path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    from ctcovid.io import dicom_header as dh

    with monkeypatch.context() as m:
        if not fast:

            def refuse(p: Path) -> None:
                raise dh._Unsupported("test: use pydicom")

            m.setattr(dh, "_fast_fields", refuse)
        h = dh.read_header(path)
    return {k: (None if v is None else np.asarray(v).tolist()) for k, v in vars(h).items() if k != "path"}


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle"])
def test_fast_header_walker_agrees_with_pydicom(tmp_path, volume_factory, monkeypatch, transfer_syntax):
    paths = write_dicom_series(volume_factory(shape=(2, 8, 8)), tmp_path, transfer_syntax=transfer_syntax)
    ds = pydicom.dcmread(paths[0])
    # a nested sequence (undefined length) holding a decoy position the walker must not take
    item = pydicom.Dataset()
    item.ImagePositionPatient = ["1", "2", "3"]
    item.ReferencedSOPInstanceUID = "1.2.3"
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.save_as(paths[0])
    assert pydicom.dcmread(paths[0])["ReferencedImageSequence"].is_undefined_length
    from ctcovid.io.dicom_header import _fast_fields

    for p in paths:
        _fast_fields(p)  # the walker handles these files itself (raises if it would defer to pydicom)
        assert _header_via(p, True, monkeypatch) == _header_via(p, False, monkeypatch)
    assert _header_via(paths[0], True, monkeypatch)["position"] != [1.0, 2.0, 3.0]


def _encapsulate_as(path: Path, codec: str, *, bits_stored: int, signed: bool) -> np.ndarray:
    """Re-encode a written slice as JPEG Lossless (SV1) or JPEG-LS; returns the stored values."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless

    ds = pydicom.dcmread(path)
    stored = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns).astype(np.int64)
    assert stored.min() >= 0 and stored.max() < 4096 and float(ds.RescaleSlope) == 1.0
    hu = stored + int(ds.RescaleIntercept)
    if signed:
        stored = stored - 2048  # values below zero, two's complement in bits_stored bits
    bits = stored & ((1 << bits_stored) - 1)
    if codec == "ljpeg":
        frame, uid = (
            imagecodecs.ljpeg_encode(bits.astype(np.uint16), bitspersample=bits_stored),
            JPEGLosslessSV1,
        )
    else:
        frame, uid = imagecodecs.jpegls_encode(bits.astype(np.uint16), level=0), JPEGLSLossless
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = int(signed), bits_stored, bits_stored - 1
    ds.RescaleIntercept = int(ds.RescaleIntercept) + (2048 if signed else 0)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True)
    return hu


@pytest.mark.parametrize("codec", ["ljpeg", "jpegls"])
@pytest.mark.parametrize(("bits_stored", "signed"), [(12, False), (12, True), (16, True)])
def test_lossless_jpeg_slices_decode_through_imagecodecs_exactly_as_through_pydicom(
    tmp_path, volume_factory, monkeypatch, codec, bits_stored, signed
):
    from ctcovid.io import dicom

    vol = volume_factory(shape=(3, 16, 16))
    paths = write_dicom_series(vol, tmp_path)
    for p in paths:
        _encapsulate_as(p, codec, bits_stored=bits_stored, signed=signed)
    from ctcovid.io.dicom_header import read_header

    assert dicom._raw_encapsulated(read_header(paths[0])) is not None  # the fast path takes it
    fast = load_volume(tmp_path)
    np.testing.assert_array_equal(fast.voxels, vol.voxels)
    monkeypatch.setattr(dicom, "_fast_codec", lambda ts: None)  # pydicom + pylibjpeg only
    np.testing.assert_array_equal(load_volume(tmp_path).voxels, fast.voxels)


def test_a_corrupt_lossless_jpeg_frame_is_reported_naming_the_file(tmp_path, volume_factory):
    vol = volume_factory(shape=(3, 16, 16))
    paths = write_dicom_series(vol, tmp_path)
    for p in paths:
        _encapsulate_as(p, "ljpeg", bits_stored=12, signed=False)
    ds = pydicom.dcmread(paths[1])
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 40])
    ds.save_as(paths[1])
    back = load_volume(tmp_path)
    assert any(paths[1].name in w and "could not be decoded" in w for w in back.warnings), back.warnings
