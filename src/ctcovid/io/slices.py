"""Reader for a folder of 2D slice images (PNG, JPEG, BMP, TIFF), as CC-CCII ships its scans.

Slice images carry no geometry: the file order (natural sort of the names, so ``2.png`` comes
before ``10.png``) is taken as ascending axis 0 (inferior -> superior by the convention of
:mod:`ctcovid.types`; the images themselves cannot tell), each image's rows are axis 1 and its
columns axis 2. Spacing is 1 mm unless given, and ``spacing_known`` says which.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ctcovid.errors import ScanReadError
from ctcovid.io.arrays import CANONICAL_DIRECTION
from ctcovid.types import ScanFormat, ScanSource, Units, Volume

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the digit runs of ``name`` numerically: ``2.png`` < ``10.png``."""
    parts = _NUMBER.split(name)
    # (0, number) / (1, text) pairs keep text and numbers comparable in any position, numbers first.
    return tuple((0, int(p)) if p.isdecimal() else (1, p.lower()) for p in parts if p)


def _image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # Pillow raises these on truncated, corrupt or hostile files (and struct/zlib errors leak
    # from some plugins); each one means "skip this file", never "abort the scan".
    return (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        TypeError,
        IndexError,
        KeyError,
        MemoryError,
        struct.error,
        zlib.error,
        Image.DecompressionBombError,
    )


def _to_gray(path: Path) -> np.ndarray:
    """Decode one image to a 2D array: colour -> luminance (8-bit), 16-bit and float kept as is."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "L"):
            arr = np.asarray(im)
        else:  # "1", "P", "RGB", "RGBA", "LA", "CMYK", ...: ITU-R 601 luma, as Pillow converts
            arr = np.asarray(im.convert("L"))
    if arr.ndim != 2:
        raise ValueError(f"decoded image has shape {arr.shape}, expected 2D")
    return arr


def list_slice_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (by suffix, hidden files ignored) in natural order."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_slice_folder(
    folder: str | Path,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    files: Sequence[Path] | None = None,
) -> Volume:
    """Stack the slice images of ``folder`` into a :class:`Volume`.

    Images are ordered by :func:`natural_key` of their names; that order is ascending axis 0.
    Colour images are converted to gray; 16-bit images keep their values. Empty or unreadable
    files, and images whose size differs from the majority size, are skipped and listed in
    ``source.skipped_files``. Units are ``Units.DISPLAY`` (values are not HU). Without
    ``spacing_mm`` the spacing is ``(1, 1, 1)`` and ``spacing_known`` is False.

    Raises:
        ScanReadError: no image in the folder could be read.
    """
    from PIL import Image

    folder = Path(folder)
    paths = list(files) if files is not None else list_slice_images(folder)
    errors = _image_errors()
    skipped: list[tuple[str, str]] = []
    sizes: dict[Path, tuple[int, int]] = {}
    with warnings.catch_warnings():
        # Pillow warns on large or odd files (DecompressionBombWarning, truncated EXIF); a slice
        # that decodes is fine, one that does not is skipped with its reason below.
        warnings.simplefilter("ignore")
        for p in paths:
            try:
                if p.stat().st_size == 0:
                    skipped.append((str(p), "empty file (0 bytes)"))
                    continue
                with Image.open(p) as im:
                    sizes[p] = (int(im.size[1]), int(im.size[0]))  # (rows, cols)
            except errors as e:
                skipped.append((str(p), f"not a readable image ({type(e).__name__}: {e})"))
        if not sizes:
            raise ScanReadError(
                folder,
                f"none of the {len(paths)} slice image(s) could be read",
                "check the files are complete PNG/JPEG/BMP/TIFF images",
            )
        best = Counter(sizes.values()).most_common(1)[0][0]
        slices: list[np.ndarray] = []
        kept: list[Path] = []
        for p, size in sizes.items():
            if size != best:
                skipped.append(
                    (str(p), f"image size {size[0]}x{size[1]} differs from the majority {best[0]}x{best[1]}")
                )
        todo = [p for p, size in sizes.items() if size == best]

        def decode(p: Path) -> np.ndarray | BaseException:
            try:
                return _to_gray(p)
            except errors as e:
                return e

        # Pillow's decoders release the GIL: threads decode PNG/JPEG slices in parallel
        # (1.6x on 2 cores for a 285-slice 512 x 512 CC-CCII scan).
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(decode, todo))
        for p, arr in zip(todo, decoded, strict=True):
            if isinstance(arr, BaseException):
                skipped.append((str(p), f"image could not be decoded ({type(arr).__name__}: {arr})"))
                continue
            if arr.shape != best:
                skipped.append((str(p), f"decoded size {arr.shape} differs from its header {best}"))
                continue
            slices.append(arr)
            kept.append(p)
    if not slices:
        raise ScanReadError(folder, f"none of the {len(paths)} slice image(s) could be decoded",
                            "check the files are complete images")  # fmt: skip
    warns: list[str] = []
    if any(a.dtype != np.uint8 for a in slices):
        warns.append("some slices are not 8-bit: their values are kept as stored (not HU, not rescaled)")
    if skipped:
        warns.append(f"{len(skipped)} file(s) skipped (see skipped_files)")
    voxels = np.stack(slices).astype(np.float32)
    source = ScanSource(
        format=ScanFormat.SLICES,
        path=str(folder),
        n_slices=len(kept),
        skipped_files=skipped,
        warnings=warns,
    )
    for w in warns:
        logger.info("%s: %s", folder, w)
    return Volume(
        voxels=voxels,
        spacing_mm=spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0),
        direction=CANONICAL_DIRECTION,
        units=Units.DISPLAY,
        source=source,
        spacing_known=spacing_mm is not None,
    )
