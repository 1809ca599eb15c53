"""Reader for volumes saved as NumPy arrays (``.npy``, ``.npz``).

An array has no geometry of its own: it is taken as ``(z, y, x)`` in the canonical orientation of
:mod:`ctcovid.types`, in HU. A ``.npz`` may add ``spacing_mm`` (3 numbers), ``origin_mm`` (3) and
``direction`` (3x3) next to the voxels.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ctcovid.errors import ScanReadError
from ctcovid.types import CANONICAL_DIRECTION as _CANONICAL
from ctcovid.types import ScanFormat, ScanSource, Units, Volume

logger = logging.getLogger(__name__)

# Columns are the LPS directions of array axes (z, y, x) in the canonical orientation of
# ctcovid.types: axis 0 -> +z (superior), axis 1 -> +y (posterior), axis 2 -> +x (patient left).
# This is what an axial DICOM series with ImageOrientationPatient (1,0,0,0,1,0) reads as.
CANONICAL_DIRECTION = np.array(_CANONICAL)

_VOXEL_KEYS = ("volume", "image")
_META_SHAPES = {"spacing_mm": (3,), "origin_mm": (3,), "direction": (3, 3)}
# numpy, zipfile and zlib fail in these ways on corrupt or truncated archives.
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    MemoryError,
    OverflowError,
    zipfile.BadZipFile,
    zlib.error,
)


def _check_npz_sizes(path: Path) -> None:
    """Refuse members whose header promises more bytes than the member holds.

    numpy allocates the promised array before reading a zip member, so a corrupt header could
    otherwise ask for terabytes.
    """
    from numpy.lib import format as npformat

    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                version = npformat.read_magic(f)
                reader = (
                    npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
                )
                shape, _, dtype = reader(f)
            need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if need > info.file_size:
                raise ValueError(f"member '{info.filename}' promises {need} bytes but holds {info.file_size}")


def _pick_voxels(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    for key in _VOXEL_KEYS:
        if key in arrays:
            return arrays[key]
    candidates = [k for k in arrays if k not in _META_SHAPES]
    if len(candidates) == 1:
        return arrays[candidates[0]]
    raise ScanReadError(
        path,
        f"cannot tell which array holds the voxels (keys: {', '.join(sorted(arrays)) or 'none'})",
        "store it under the key 'volume' or 'image'",
    )


def _meta(path: Path, arrays: dict[str, np.ndarray], key: str) -> np.ndarray | None:
    if key not in arrays:
        return None
    value = np.asarray(arrays[key])
    if value.dtype.kind not in "iuf" or value.shape != _META_SHAPES[key] or not np.all(np.isfinite(value)):
        raise ScanReadError(path, f"'{key}' must be {_META_SHAPES[key]} finite numbers, got {value!r}")
    return value.astype(np.float64)


def read_array(path: str | Path, *, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
    """Read a 3D ``.npy`` or ``.npz`` array as a :class:`Volume` (HU, canonical orientation).

    A ``.npz`` takes its voxels from key ``volume``, else ``image``, else its only array;
    optional keys ``spacing_mm``, ``origin_mm`` and ``direction`` set the geometry. ``spacing_mm``
    given here is used when the file has none; with neither, spacing is 1 mm and
    ``spacing_known`` is False. Pickled (object) arrays are refused.

    Raises:
        ScanReadError: unreadable file, no voxel array, not 3D, not numeric, or bad geometry keys.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            _check_npz_sizes(path)
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            # mmap first: a corrupt header promising more data than the file holds fails here
            # instead of allocating the promised size.
            arrays = {"volume": np.array(np.load(path, mmap_mode="r", allow_pickle=False))}
    except _LOAD_ERRORS as e:
        raise ScanReadError(path, f"not a readable NumPy file ({type(e).__name__}: {e})",
                            "save it with numpy.save / numpy.savez") from e  # fmt: skip
    voxels = np.asarray(_pick_voxels(path, arrays))
    if voxels.ndim != 3:
        raise ScanReadError(
            path, f"array has shape {voxels.shape}, not a 3D volume", "save a (z, y, x) array"
        )
    if voxels.dtype.kind not in "biuf" or voxels.size == 0:
        raise ScanReadError(
            path, f"array of dtype {voxels.dtype} and shape {voxels.shape} is not a numeric volume"
        )
    spacing = _meta(path, arrays, "spacing_mm")
    if spacing is not None and np.any(spacing <= 0):
        raise ScanReadError(path, f"'spacing_mm' must be positive, got {spacing.tolist()}")
    origin = _meta(path, arrays, "origin_mm")
    direction = _meta(path, arrays, "direction")
    known = spacing is not None or spacing_mm is not None
    chosen = (
        spacing
        if spacing is not None
        else np.asarray(spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0))
    )
    source = ScanSource(format=ScanFormat.NUMPY, path=str(path), n_slices=int(voxels.shape[0]))
    return Volume(
        voxels=voxels.astype(np.float32),
        spacing_mm=(float(chosen[0]), float(chosen[1]), float(chosen[2])),
        origin_mm=(0.0, 0.0, 0.0)
        if origin is None
        else (float(origin[0]), float(origin[1]), float(origin[2])),
        direction=CANONICAL_DIRECTION if direction is None else direction,
        units=Units.HU,
        source=source,
        spacing_known=known,
    )
