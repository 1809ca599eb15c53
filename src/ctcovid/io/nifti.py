"""NIfTI reader (``.nii``, ``.nii.gz``) producing the canonical orientation of :mod:`ctcovid.types`.

NIfTI world coordinates are RAS+ while ctcovid (like DICOM and ITK) uses LPS. The reader
reorients the array so that axis 0 points superior, axis 1 posterior and axis 2 left (nibabel
axis codes ``('S', 'P', 'L')``) and converts the affine to LPS: ``origin_mm``, ``direction`` and
``spacing_mm`` then mean exactly what they mean for a DICOM series of the same scan.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from ctcovid.errors import ScanReadError
from ctcovid.types import ScanFormat, ScanSource, Units, Volume

logger = logging.getLogger(__name__)

_CANONICAL_AXCODES = ("S", "P", "L")  # array axes (z, y, x): inferior->superior, A->P, R->L
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
# A gzip stream never inflates by more than ~1032:1; a header promising more data than that is
# corrupt, and trusting it would make nibabel allocate the promised size before failing.
_MAX_GZIP_RATIO = 1100


def _nibabel_errors() -> tuple[type[BaseException], ...]:
    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    # nibabel, gzip and numpy fail in these ways on truncated or corrupt files.
    return (
        nib.filebasedimages.ImageFileError,
        HeaderDataError,
        WrapStructError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
        struct.error,
        zlib.error,
        gzip.BadGzipFile,
    )


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI-1/2 file as a float32 :class:`Volume` in the canonical orientation.

    Voxel values are scaled by ``scl_slope``/``scl_inter`` (nibabel applies them) and taken as HU.
    The array is reoriented to nibabel axis codes ``('S', 'P', 'L')`` on ``(z, y, x)`` (flips and
    axis permutations only, no resampling; an oblique scan keeps its obliqueness in
    ``direction``); the RAS affine is converted to LPS ``origin_mm`` and ``direction``. 4D files
    with trailing singleton dimensions are squeezed; real 4D data is refused.

    Raises:
        ScanReadError: unreadable or corrupt file, not 3D, or an unusable affine.
    """
    import nibabel as nib

    path = Path(path)
    # nibabel reports the header fields it repairs through its own stderr handler; library code
    # must not print, and a header broken enough to matter fails below with a ScanReadError.
    # (nibabel's LoggingOutputSuppressor leaves Python's last-resort handler printing.)
    nib_logger = nib.imageglobals.logger
    level = nib_logger.level
    nib_logger.setLevel(logging.CRITICAL + 1)
    try:
        return _read_nifti(path)
    finally:
        nib_logger.setLevel(level)


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib
    from nibabel import orientations as ornt

    errors = _nibabel_errors()
    try:
        loaded = nib.load(str(path))
    except errors as e:
        raise ScanReadError(
            path, f"not a readable NIfTI file ({type(e).__name__}: {e})", "check the file is complete"
        ) from e
    if not isinstance(loaded, nib.spatialimages.SpatialImage) or loaded.affine is None:
        raise ScanReadError(path, f"{type(loaded).__name__} is not a NIfTI image with an affine")
    img = loaded
    shape = tuple(int(s) for s in img.shape)
    dtype = np.dtype(img.get_data_dtype())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 1:
        raise ScanReadError(
            path, f"NIfTI data has shape {tuple(img.shape)}, not a 3D volume", "pass a 3D scan"
        )
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    file_size = path.stat().st_size
    limit = file_size * (_MAX_GZIP_RATIO if path.name.lower().endswith(".gz") else 1)
    if n_bytes > limit:
        raise ScanReadError(path, f"header promises {n_bytes} bytes of voxels but the file has {file_size}",
                            "the file is truncated or its header is corrupt")  # fmt: skip
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanReadError(
            path,
            f"NIfTI affine is singular or not finite: {affine.round(4).tolist()}",
            "fix the header (sform/qform)",
        )
    try:
        data = np.asarray(img.dataobj).reshape(shape)
    except errors as e:
        raise ScanReadError(path, f"voxel data could not be read ({type(e).__name__}: {e})",
                            "the file is truncated or corrupt") from e  # fmt: skip

    # Reorient (flips/transposes only) so that array axes point S, P, L in nibabel's RAS world.
    current = ornt.io_orientation(affine)
    transform = ornt.ornt_transform(current, ornt.axcodes2ornt(_CANONICAL_AXCODES))
    data = ornt.apply_orientation(data, transform)
    affine = affine @ ornt.inv_ornt_aff(transform, shape)

    cols_lps = _LPS_FROM_RAS @ affine[:3, :3]  # column i: LPS step of one voxel along array axis i
    spacing = np.linalg.norm(cols_lps, axis=0)
    direction = cols_lps / spacing
    origin = _LPS_FROM_RAS @ affine[:3, 3]
    warns: list[str] = []
    if not np.all(np.isfinite(data)):
        warns.append("volume contains NaN or infinite voxels")
    source = ScanSource(format=ScanFormat.NIFTI, path=str(path), n_slices=int(data.shape[0]), warnings=warns)
    return Volume(
        voxels=np.array(data, dtype=np.float32, order="C"),  # a copy: never a view of a memory map
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=direction,
        units=Units.HU,
        source=source,
    )
