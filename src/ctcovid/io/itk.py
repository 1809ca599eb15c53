"""MetaImage and NRRD reader (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) through SimpleITK.

MetaImage is the format of LUNA16 (``.mhd`` header + ``.raw`` data) and STOIC (``.mha``); NRRD
is 3D Slicer's. Both keep their geometry the ITK way, which is already ctcovid's: LPS world,
``origin`` = position of the first voxel's centre, ``direction`` columns = unit vectors of the
index axes. SimpleITK is the reference implementation of both formats (MetaIO is ITK's own; its
NRRD reader converts RAS and other ``space`` values to LPS), so nothing here re-derives their
conventions; this module only reorients the array to the canonical orientation of
:mod:`ctcovid.types` exactly as the NIfTI reader does (same axis choice on oblique scans).

SimpleITK is an optional dependency (``pip install 'ctcovid[itk]'``), imported on first use.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ctcovid.errors import MissingExtraError, ScanReadError
from ctcovid.types import ScanFormat, ScanSource, Units, Volume

logger = logging.getLogger(__name__)

# suffix -> (format name for messages, SimpleITK ImageIO that must read it)
_FORMATS: dict[str, tuple[str, str]] = {
    ".mha": ("MetaImage", "MetaImageIO"),
    ".mhd": ("MetaImage", "MetaImageIO"),
    ".nrrd": ("NRRD", "NrrdImageIO"),
    ".nhdr": ("NRRD", "NrrdImageIO"),
}
ITK_SUFFIXES: tuple[str, ...] = tuple(_FORMATS)

_SCAN_FORMAT = {"MetaImage": ScanFormat.METAIMAGE, "NRRD": ScanFormat.NRRD}

# Array axes (z, y, x) must point +S, +P, +L: LPS world axes 2, 1, 0, all positive (nibabel ornt).
_CANONICAL_ORNT = np.array([[2.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
# zlib/gzip never inflate by more than ~1032:1 (same bound as the NIfTI reader).
_MAX_GZIP_RATIO = 1100
_HEADER_BYTES = 65536  # headers are a few hundred bytes; read no more than this to find the data file
_METAIMAGE_REQUIRED = ("NDims", "DimSize", "ElementType", "ElementDataFile")
_EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


def is_itk_path(path: str | Path) -> bool:
    """True for names ending in ``.mha``, ``.mhd``, ``.nrrd`` or ``.nhdr`` (case-insensitive)."""
    return Path(path).suffix.lower() in _FORMATS


def _import_sitk() -> ModuleType:
    try:
        import SimpleITK as sitk
    except ImportError as e:
        raise MissingExtraError("SimpleITK", "itk") from e
    return sitk


def _itk_reason(e: BaseException) -> str:
    """The one useful line of a SimpleITK exception (they span lines and quote C++ source paths)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        for marker in ("ITK ERROR:", "sitk::ERROR:"):
            if marker in ln:
                # drop the C++ object's name and address: "MetaImageIO(0x55a8...): File cannot ..."
                return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", ln.split(marker, 1)[1].strip())
    return lines[-1] if lines else type(e).__name__


@dataclass(frozen=True)
class _DataFile:
    """Where a header says its voxels are, and how they are encoded (from a light header scan)."""

    path: Path | None  # None: a list of files or a file-name pattern (left to SimpleITK)
    compressed: bool
    bounded: bool  # False: an encoding whose size says nothing about the voxel count


def _header_lines(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            head = f.read(_HEADER_BYTES)
    except OSError as e:
        raise ScanReadError(path, f"file cannot be read ({e.strerror})", "check its permissions") from e
    # The header is ASCII text; binary voxels may follow it in the same file (the parsers stop at
    # ElementDataFile or at NRRD's blank line), and a NUL byte is never header text.
    text = head.split(b"\0", 1)[0].decode("latin-1")
    return text.splitlines()


def _is_file_list(name: str) -> bool:
    """``LIST`` (file names follow) or a ``printf`` pattern with its numbers: one file per slice."""
    parts = name.split()
    return bool(parts) and (parts[0].upper() == "LIST" or len(parts) > 1 or "%" in name)


def _metaimage_data_file(path: Path, lines: list[str]) -> _DataFile:
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":  # always the last field; data follows
            break
    # Checked here too (MetaIO checks them, but prints to stderr and says less).
    missing = [key for key in _METAIMAGE_REQUIRED if not fields.get(key.lower())]
    if missing:
        raise ScanReadError(path, f"MetaImage header lacks {', '.join(missing)}",
                            "the header is truncated or corrupt")  # fmt: skip
    compressed = fields.get("compresseddata", "false").lower() == "true"
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        return _DataFile(path, compressed, bounded=True)
    if _is_file_list(name):
        return _DataFile(None, compressed, bounded=False)
    return _DataFile(path.parent / name, compressed, bounded=True)


def _nrrd_data_file(path: Path, lines: list[str]) -> _DataFile:
    if not lines or not lines[0].startswith("NRRD"):
        raise ScanReadError(path, "not a NRRD file (it does not start with 'NRRD000x')",
                            "check the file is a NRRD header")  # fmt: skip
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip():
            break  # a blank line ends the header
        if line.startswith("#") or ":=" in line:
            continue  # comments and key/value pairs
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    encoding = fields.get("encoding", "raw").lower()
    compressed = encoding in ("gzip", "gz", "bzip2", "bz2")
    bounded = encoding in ("raw", "gzip", "gz")  # bzip2 has no small ratio bound; text varies
    name = fields.get("data file", fields.get("datafile"))
    if name is None:
        return _DataFile(path, compressed, bounded)
    if _is_file_list(name):
        return _DataFile(None, compressed, bounded=False)
    return _DataFile(path.parent / name, compressed, bounded)


def _data_file(path: Path) -> _DataFile:
    lines = _header_lines(path)
    if _FORMATS[path.suffix.lower()][0] == "MetaImage":
        return _metaimage_data_file(path, lines)
    return _nrrd_data_file(path, lines)


def _numpy_dtype(sitk: ModuleType, pixel_id: int) -> np.dtype | None:
    dtypes: dict[int, np.dtype] = {
        sitk.sitkUInt8: np.dtype(np.uint8),
        sitk.sitkInt8: np.dtype(np.int8),
        sitk.sitkUInt16: np.dtype(np.uint16),
        sitk.sitkInt16: np.dtype(np.int16),
        sitk.sitkUInt32: np.dtype(np.uint32),
        sitk.sitkInt32: np.dtype(np.int32),
        sitk.sitkUInt64: np.dtype(np.uint64),
        sitk.sitkInt64: np.dtype(np.int64),
        sitk.sitkFloat32: np.dtype(np.float32),
        sitk.sitkFloat64: np.dtype(np.float64),
    }
    return dtypes.get(pixel_id)


def read_itk(path: str | Path) -> Volume:
    """Read a 3D MetaImage (``.mha``, ``.mhd`` + data file) or NRRD (``.nrrd``, ``.nhdr`` + data file).

    Voxel values are taken as stored, as HU (8-bit files, which cannot hold HU, get a warning).
    The array is reoriented to the canonical orientation of :mod:`ctcovid.types` by flips and
    axis permutations only, choosing axes as :func:`~ctcovid.io.nifti.read_nifti` does, so an
    oblique scan keeps its obliqueness in ``direction``. A 4D file whose fourth dimension is 1
    is read as 3D.

    Raises:
        MissingExtraError: SimpleITK is not installed (``pip install 'ctcovid[itk]'``).
        ScanReadError: missing data file, corrupt or truncated file, not 3D, vector pixels, or a
            singular direction.
    """
    path = Path(path)
    kind, image_io = _FORMATS[path.suffix.lower()]
    sitk = _import_sitk()
    data_file = _data_file(path)
    if data_file.path is not None and not data_file.path.is_file():
        raise ScanReadError(path, f"its data file '{data_file.path}' does not exist",
                            f"keep the {kind} header next to the data file it names")  # fmt: skip

    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ScanReadError(path, f"not a readable {kind} header ({_itk_reason(e)})",
                            "the header is corrupt or not this format") from e  # fmt: skip
    size = tuple(int(s) for s in reader.GetSize())
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) != 3 or min(size) < 1:
        raise ScanReadError(path, f"{kind} data has size {tuple(reader.GetSize())}, not a 3D volume",
                            "pass a 3D scan")  # fmt: skip
    if reader.GetNumberOfComponents() != 1:
        raise ScanReadError(path, f"{kind} voxels have {reader.GetNumberOfComponents()} components "
                            "(a vector or colour image), not one intensity", "pass a CT scan")  # fmt: skip
    dtype = _numpy_dtype(sitk, reader.GetPixelID())
    if dtype is None:
        raise ScanReadError(path, f"{kind} pixel type {reader.GetPixelIDTypeAsString()} is not a "
                            "real-valued scalar", "pass a CT scan")  # fmt: skip
    _check_size(path, data_file, int(np.prod(size, dtype=np.int64)) * dtype.itemsize)

    try:
        image = reader.Execute()
    except (RuntimeError, MemoryError) as e:
        raise ScanReadError(path, f"{kind} voxel data could not be read ({_itk_reason(e)})",
                            "the file is truncated or corrupt") from e  # fmt: skip
    return _to_volume(path, sitk, image, size, dtype)


def _check_size(path: Path, data_file: _DataFile, n_bytes: int) -> None:
    """Refuse a header that promises more voxels than its data file can hold, before allocating."""
    if data_file.path is None or not data_file.bounded:
        return
    file_size = data_file.path.stat().st_size
    limit = file_size * (_MAX_GZIP_RATIO if data_file.compressed else 1)
    if n_bytes > limit:
        raise ScanReadError(path, f"header promises {n_bytes} bytes of voxels but '{data_file.path.name}' "
                            f"has {file_size}", "the data file is truncated or the header is corrupt")  # fmt: skip


def _to_volume(path: Path, sitk: ModuleType, image: Any, size: tuple[int, ...], dtype: np.dtype) -> Volume:
    from nibabel import orientations as ornt

    ndim = image.GetDimension()
    spacing_xyz = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    direction_xyz = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)[:3, :3]
    # ITK index axes are (x, y, z) and NumPy's view of them is (z, y, x): reverse the columns.
    affine = np.eye(4)
    affine[:3, :3] = (direction_xyz * spacing_xyz)[:, ::-1]  # column a: LPS step along array axis a
    affine[:3, 3] = origin
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanReadError(path, f"direction/spacing are singular or not finite: direction "
                            f"{direction_xyz.round(4).tolist()}, spacing {spacing_xyz.tolist()}",
                            "fix the header's direction (TransformMatrix / space directions)")  # fmt: skip

    data = sitk.GetArrayViewFromImage(image).reshape(size[::-1])  # (z, y, x), no copy
    # Flips and transposes only (views), chosen by nibabel as for NIfTI; one copy below.
    transform = ornt.ornt_transform(ornt.io_orientation(affine), _CANONICAL_ORNT)
    data = ornt.apply_orientation(data, transform)
    affine = affine @ ornt.inv_ornt_aff(transform, size[::-1])

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    origin = affine[:3, 3]
    voxels = np.array(data, dtype=np.float32, order="C")  # a copy: never a view of ITK's buffer
    warns: list[str] = []
    if dtype in _EIGHT_BIT:
        warns.append(f"voxels are stored as {dtype} (range {voxels.min():g}..{voxels.max():g}), which "
                     "cannot hold CT values in HU: this looks like a mask or a display export")  # fmt: skip
    if dtype.kind == "f" and not np.all(np.isfinite(voxels)):
        warns.append("volume contains NaN or infinite voxels")
    kind = _SCAN_FORMAT[_FORMATS[path.suffix.lower()][0]]
    source = ScanSource(format=kind, path=str(path), n_slices=int(voxels.shape[0]), warnings=warns)
    return Volume(
        voxels=voxels,
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=direction,
        units=Units.HU,
        source=source,
    )
