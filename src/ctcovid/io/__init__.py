"""Scan I/O: :func:`load_volume` reads any supported scan; writers produce the same formats.

Supported inputs (see each reader for details):

* a DICOM series folder, or one DICOM file of it (:mod:`ctcovid.io.dicom`), recognised by content;
* a NIfTI file ``.nii`` / ``.nii.gz`` (:mod:`ctcovid.io.nifti`);
* a MetaImage file ``.mha`` / ``.mhd`` (+ its ``.raw``/``.zraw``), e.g. LUNA16, STOIC, or a NRRD file
  ``.nrrd`` / ``.nhdr`` (+ its data file) (:mod:`ctcovid.io.itk`, needs ``ctcovid[itk]``);
* a folder of slice images PNG/JPEG/BMP/TIFF, e.g. CC-CCII (:mod:`ctcovid.io.slices`);
* a NumPy ``.npy`` / ``.npz`` array (:mod:`ctcovid.io.arrays`).

Every reader returns voxels in the orientation fixed in :mod:`ctcovid.types` and raises
:class:`~ctcovid.errors.ScanReadError` (never a raw pydicom/nibabel/Pillow/NumPy error) on input
it cannot read (or :class:`~ctcovid.errors.MissingExtraError` when an optional reader is not installed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ctcovid.errors import ScanReadError
from ctcovid.io.arrays import CANONICAL_DIRECTION, read_array
from ctcovid.io.dicom import read_dicom_series
from ctcovid.io.dicom_header import is_dicom_file
from ctcovid.io.itk import ITK_SUFFIXES, is_itk_path, read_itk
from ctcovid.io.nifti import is_nifti_path, read_nifti
from ctcovid.io.slices import IMAGE_SUFFIXES, list_slice_images, natural_key, read_slice_folder
from ctcovid.io.write import write_dicom_series, write_nifti, write_slices
from ctcovid.types import Volume

logger = logging.getLogger(__name__)

_ARRAY_SUFFIXES = (".npy", ".npz")
_SUPPORTED = (
    "a DICOM series folder or file, .nii/.nii.gz, .mha/.mhd (MetaImage), .nrrd/.nhdr (NRRD), "
    "a folder of PNG/JPG/BMP/TIF slices, .npy/.npz"
)


def load_volume(
    path: str | Path,
    *,
    series_uid: str | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> Volume:
    """Read a scan from ``path``, whatever its format, as a float32 :class:`~ctcovid.types.Volume`.

    Dispatch: a ``.nii``/``.nii.gz`` file -> NIfTI; ``.mha``/``.mhd``/``.nrrd``/``.nhdr`` ->
    MetaImage/NRRD through SimpleITK; ``.npy``/``.npz`` -> array; any other file
    that is DICOM (by content) -> the series it belongs to, read from its folder; a folder ->
    its DICOM series when it holds DICOM files, else its slice images.

    Args:
        path: file or folder.
        series_uid: for DICOM folders with several series, the SeriesInstanceUID to read
            (default: the largest axial CT series; the others are listed in
            ``volume.source.other_series``).
        spacing_mm: ``(z, y, x)`` spacing for inputs without geometry (slice images, arrays
            without a ``spacing_mm`` key); ignored for DICOM, NIfTI, MetaImage and NRRD.

    Raises:
        ScanReadError: the path does not exist, holds no readable scan, or the scan is corrupt
            or not 3D. The message names the path, the reason and what to do.
        MissingExtraError: the file needs an optional reader that is not installed
            (``.mha``/``.mhd``/``.nrrd``/``.nhdr`` need ``pip install 'ctcovid[itk]'``).
    """
    p = Path(path)
    if not p.exists():
        raise ScanReadError(p, "no such file or folder", "check the path")
    try:
        return _dispatch(p, series_uid=series_uid, spacing_mm=spacing_mm)
    except ScanReadError:
        raise
    except ValueError as e:
        # Volume() refuses impossible geometry (e.g. zero spacing from a corrupt header) with a
        # ValueError; it is still a scan that cannot be read, so say so with the path.
        raise ScanReadError(
            p, f"the scan's data or geometry is invalid ({e})", "the file is probably corrupt"
        ) from e


def _dispatch(p: Path, *, series_uid: str | None, spacing_mm: tuple[float, float, float] | None) -> Volume:
    if p.is_dir():
        return _load_folder(p, series_uid=series_uid, spacing_mm=spacing_mm)
    if is_nifti_path(p):
        return read_nifti(p)
    if is_itk_path(p):
        return read_itk(p)
    if p.suffix.lower() in _ARRAY_SUFFIXES:
        return read_array(p, spacing_mm=spacing_mm)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise ScanReadError(
            p, "a single slice image is not a 3D scan", "pass the folder holding all the slices"
        )
    if is_dicom_file(p):
        return read_dicom_series(p, series_uid=series_uid)
    raise ScanReadError(p, "unrecognised file format", f"supported: {_SUPPORTED}")


def _load_folder(
    folder: Path, *, series_uid: str | None, spacing_mm: tuple[float, float, float] | None
) -> Volume:
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise ScanReadError(folder, f"folder cannot be listed ({e.strerror})", "check its permissions") from e
    files = [e for e in entries if e.is_file() and not e.name.startswith(".")]
    if not files:
        subdirs = [e.name for e in entries if e.is_dir()]
        hint = (
            f"it holds only folders ({', '.join(subdirs[:5])}); pass one series folder" if subdirs else None
        )
        raise ScanReadError(folder, "folder is empty" if not entries else "folder holds no files", hint)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    others = [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    # DICOM wins when present: its geometry is real, slice images (thumbnails, exports) have none.
    # Extension-less files are DICOM candidates too: real series often have no extension.
    if any(is_dicom_file(f) for f in others) or (others and not images):
        try:
            return read_dicom_series(folder, series_uid=series_uid)
        except ScanReadError:
            if not images:
                nifti = [f.name for f in others
                         if is_nifti_path(f) or is_itk_path(f) or f.suffix.lower() in _ARRAY_SUFFIXES]  # fmt: skip
                if nifti:
                    raise ScanReadError(folder, "no DICOM series in the folder",
                                        f"it holds {', '.join(nifti[:3])}: pass that file instead") from None  # fmt: skip
                raise
    if images:
        return read_slice_folder(folder, spacing_mm=spacing_mm, files=list_slice_images(folder))
    raise ScanReadError(folder, "no readable scan in the folder", f"supported: {_SUPPORTED}")


__all__ = [
    "CANONICAL_DIRECTION",
    "IMAGE_SUFFIXES",
    "ITK_SUFFIXES",
    "is_dicom_file",
    "is_itk_path",
    "is_nifti_path",
    "load_volume",
    "natural_key",
    "read_array",
    "read_dicom_series",
    "read_itk",
    "read_nifti",
    "read_slice_folder",
    "write_dicom_series",
    "write_nifti",
    "write_slices",
]
