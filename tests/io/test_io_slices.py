"""Slice-image folders: natural order, colour and 16-bit images, damaged files, mixed sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctcovid.errors import ScanReadError
from ctcovid.io import load_volume, natural_key
from ctcovid.types import ScanFormat, Units


def _png(path: Path, value: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> None:
    rows, cols = size
    img = Image.new(mode, (cols, rows), color=value if mode in ("L", "I;16") else (value, value, value))
    img.save(path)


def test_natural_key_orders_numbers_numerically():
    names = ["10.png", "2.png", "1.png", "IM-2-10.png", "IM-2-9.png", "a.png"]
    assert sorted(names, key=natural_key) == [
        "1.png",
        "2.png",
        "10.png",
        "a.png",
        "IM-2-9.png",
        "IM-2-10.png",
    ]


def test_images_stack_in_natural_order_along_axis0(tmp_path):
    for k in (0, 1, 2, 10, 11, 20):
        _png(tmp_path / f"{k}.png", value=k)
    vol = load_volume(tmp_path)
    assert vol.shape == (6, 6, 5)
    assert vol.voxels[:, 0, 0].tolist() == [0, 1, 2, 10, 11, 20]
    assert vol.units is Units.DISPLAY and not vol.spacing_known and vol.spacing_mm == (1.0, 1.0, 1.0)
    assert vol.source is not None and vol.source.format is ScanFormat.SLICES


def test_rows_and_columns_keep_image_layout(tmp_path):
    arr = np.zeros((4, 7), dtype=np.uint8)
    arr[0, 6] = 200  # top-right pixel
    for k in range(2):
        Image.fromarray(arr).save(tmp_path / f"{k}.png")
    vol = load_volume(tmp_path)
    assert vol.shape == (2, 4, 7) and vol.voxels[1, 0, 6] == 200


def test_spacing_can_be_given(tmp_path):
    for k in range(2):
        _png(tmp_path / f"{k}.png", value=1)
    vol = load_volume(tmp_path, spacing_mm=(5.0, 0.7, 0.7))
    assert vol.spacing_mm == (5.0, 0.7, 0.7) and vol.spacing_known


def test_rgb_and_rgba_become_gray(tmp_path):
    Image.new("RGB", (5, 6), color=(100, 100, 100)).save(tmp_path / "1.png")
    Image.new("RGBA", (5, 6), color=(50, 50, 50, 255)).save(tmp_path / "2.png")
    Image.new("RGB", (5, 6), color=(30, 30, 30)).save(tmp_path / "3.jpg")
    vol = load_volume(tmp_path)
    assert vol.voxels[:2, 0, 0].tolist() == [100, 50]
    assert abs(vol.voxels[2, 0, 0] - 30) <= 2  # JPEG is lossy


def test_16bit_png_keeps_its_values(tmp_path):
    for k, value in enumerate((0, 3000, 60000)):
        Image.fromarray(np.full((6, 5), value, dtype=np.uint16)).save(tmp_path / f"{k}.png")
    vol = load_volume(tmp_path)
    assert vol.voxels[:, 2, 2].tolist() == [0, 3000, 60000]
    assert any("not 8-bit" in w for w in vol.warnings)


def test_broken_and_empty_images_are_skipped_and_named(tmp_path):
    for k in range(4):
        _png(tmp_path / f"{k}.png", value=10 * k)
    (tmp_path / "4.png").write_bytes(b"")
    (tmp_path / "5.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (tmp_path / "0.png").read_bytes()
    (tmp_path / "6.png").write_bytes(good[: len(good) // 2])  # truncated mid-stream
    vol = load_volume(tmp_path)
    assert vol.voxels[:, 0, 0].tolist() == [0, 10, 20, 30]
    assert vol.source is not None
    reasons = {Path(p).name: r for p, r in vol.source.skipped_files}
    assert set(reasons) == {"4.png", "5.png", "6.png"}
    assert "0 bytes" in reasons["4.png"]


def test_mixed_sizes_keep_the_majority_and_name_the_rest(tmp_path):
    for k in range(3):
        _png(tmp_path / f"{k}.png", value=k, size=(6, 5))
    _png(tmp_path / "3.png", value=9, size=(8, 8))
    vol = load_volume(tmp_path)
    assert vol.shape == (3, 6, 5)
    assert vol.source is not None
    assert [(Path(p).name, "8x8" in r) for p, r in vol.source.skipped_files] == [("3.png", True)]


def test_folder_of_only_broken_images_raises_naming_the_path(tmp_path):
    (tmp_path / "1.png").write_bytes(b"")
    (tmp_path / "2.png").write_bytes(b"junk")
    with pytest.raises(ScanReadError, match="could be read") as err:
        load_volume(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_single_image_file_is_refused(tmp_path):
    _png(tmp_path / "1.png", value=1)
    with pytest.raises(ScanReadError, match="single slice"):
        load_volume(tmp_path / "1.png")
