from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ctcovid.errors import ScanReadError
from ctcovid.predict import UnsafeArchiveError, ZipLimits, extract_zip_safely, find_scans, open_scan


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_entries_get_server_names_in_natural_order(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "s.zip", [(f"scan/{k}.png", _png(k)) for k in (10, 2, 1)]
                   + [("__MACOSX/scan/._1.png", b"junk"), ("scan/notes.txt", b"hi")])  # fmt: skip
    folder = extract_zip_safely(archive, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    from PIL import Image

    values = [int(np.asarray(Image.open(folder / f"{i:06d}.png"))[0, 0]) for i in range(3)]
    assert values == [1, 2, 10]  # natural order of the original names, not lexical


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("../escape.dcm", b"x")], "unsafe zip entry '../escape.dcm'"),
        ([("a/../../escape.dcm", b"x")], "unsafe zip entry"),
        ([("/abs.dcm", b"x")], "unsafe zip entry '/abs.dcm'"),
        ([("C:/win.dcm", b"x")], "unsafe zip entry 'C:/win.dcm'"),
        ([("a\\..\\..\\b.dcm", b"x")], "unsafe zip entry"),
    ],
)
def test_unsafe_names_are_refused_before_anything_is_written(tmp_path: Path, entries, message: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=message.replace("(", r"\(")):
        extract_zip_safely(_zip(tmp_path / "z.zip", entries), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.dcm").exists()


def test_limits_on_entries_and_declared_size(tmp_path: Path) -> None:
    many = _zip(tmp_path / "many.zip", [(f"{i}.dcm", b"") for i in range(11)])
    with pytest.raises(UnsafeArchiveError, match="11 entries, more than the limit of 10"):
        extract_zip_safely(many, tmp_path / "o1", ZipLimits(max_entries=10))
    big = _zip(tmp_path / "big.zip", [("a.dcm", bytes(2 << 20))])
    with pytest.raises(UnsafeArchiveError, match="unpack to 2097152 bytes"):
        extract_zip_safely(big, tmp_path / "o2", ZipLimits(max_total_bytes=1 << 20))


def test_a_bomb_with_lying_headers_stops_at_the_limit(tmp_path: Path) -> None:
    # Headers claim 100 bytes; the deflated stream holds 4 MiB of zeros.
    data = bytearray(_zip(tmp_path / "bomb.zip", [("bomb.dcm", bytes(4 << 20))]).read_bytes())
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 100)  # uncompressed size, local header
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 100)  # uncompressed size, central directory
    (tmp_path / "bomb.zip").write_bytes(bytes(data))
    with pytest.raises(ScanReadError):
        extract_zip_safely(tmp_path / "bomb.zip", tmp_path / "out", ZipLimits(max_total_bytes=1 << 20))
    written = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written <= 1 << 20


def test_slice_images_from_two_folders_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "two.zip", [("a/1.png", _png(1)), ("b/1.png", _png(2))])
    with pytest.raises(ScanReadError, match="slice images in 2 folders"):
        extract_zip_safely(archive, tmp_path / "out")


def test_not_a_zip_is_a_scan_read_error(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ScanReadError, match="not a readable zip archive"):
        extract_zip_safely(tmp_path / "x.zip", tmp_path / "out")


def test_open_scan_removes_its_temp_folder_even_when_reading_fails(scan_files, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with open_scan(scan_files["zip"], tmp_dir=work) as volume:
        assert volume.shape == (20, 64, 64)
        assert len(list(work.iterdir())) == 1  # the unpacked series, while in use
    assert list(work.iterdir()) == []
    junk = _zip(tmp_path / "junk.zip", [("a.dcm", b"not dicom")])
    with pytest.raises(ScanReadError, match="junk.zip"), open_scan(junk, tmp_dir=work):
        pass
    assert list(work.iterdir()) == []


def test_a_folder_of_metaimage_and_nrrd_scans_is_found_and_probed(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    from ctcovid.data.cohorts.base import probe_scan

    image = sitk.GetImageFromArray(np.zeros((7, 8, 9), np.int16))  # numpy (z, y, x)
    sitk.WriteImage(image, str(tmp_path / "luna.mhd"))  # + luna.raw, a data file, not a scan
    sitk.WriteImage(image, str(tmp_path / "slicer.nrrd"))
    assert sorted(sid for sid, _ in find_scans(tmp_path)) == ["luna", "slicer"]
    assert probe_scan(tmp_path / "luna.mhd").n_slices == 7 == probe_scan(tmp_path / "slicer.nrrd").n_slices
    assert probe_scan(tmp_path / "luna.mhd").format == "metaimage"
