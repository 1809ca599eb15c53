"""Writers: a :class:`~ctcovid.types.Volume` to a DICOM series, a NIfTI file or slice images.

They exist so that synthetic cohorts and tests exercise the readers on the same formats real
cohorts come in. Every writer keeps the geometry convention of :mod:`ctcovid.types`, so
``load_volume(write_x(vol, ...))`` gives back the same voxel grid, spacing, origin and direction.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ctcovid.types import Units, Volume

logger = logging.getLogger(__name__)

# transfer_syntax option -> (UID, pydicom encoding plugin; "" lets pydicom choose)
_TRANSFER_SYNTAXES: dict[str, tuple[str, str]] = {
    "explicit_le": (ExplicitVRLittleEndian, ""),
    "rle": (RLELossless, "pydicom"),  # pydicom's own pure-Python RLE encoder: no extra dependency
    "jpeg2000": (JPEG2000Lossless, "pylibjpeg"),  # pylibjpeg-openjpeg >= 2.0 encodes J2K
    "jpegls": (JPEGLSLossless, ""),  # needs pyjpegls (or gdcm); checked at call time
}

_INT16_MIN, _INT16_MAX = -32768, 32767
_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root; marks files written by ctcovid


def _affine_parts(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normal, column cosine, row cosine) as LPS unit vectors: direction columns 0, 1, 2."""
    d = np.asarray(volume.direction, dtype=np.float64)
    return d[:, 0], d[:, 1], d[:, 2]


def _ds_str(x: float) -> str:
    """A float as a DICOM DS string (at most 16 characters), exact for the values we write."""
    s = f"{x:.10g}"
    if len(s) > 16:
        s = f"{x:.8g}"
    return s


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    patient_id: str = "ANON",
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "",
    modality: str = "CT",
    transfer_syntax: str = "explicit_le",
) -> list[Path]:
    """Write ``volume`` as one CT Image Storage DICOM file per axis-0 slice.

    Pixels are stored as signed int16 with ``RescaleSlope = 1`` and ``RescaleIntercept = -1024``:
    stored = ``rint(HU) + 1024`` (round half to even), so integer HU round-trip exactly and other
    values come back rounded to the nearest integer. Geometry: slice ``k`` gets
    ``ImagePositionPatient = origin_mm + direction[:, 0] * spacing_mm[0] * k``,
    ``ImageOrientationPatient = (direction[:, 2], direction[:, 1])`` (row cosine, column cosine),
    ``PixelSpacing = (spacing_mm[1], spacing_mm[2])`` (row spacing, column spacing) and
    ``SliceThickness = spacing_mm[0]``.

    When ``series_uid`` (or ``study_uid``) is None it is derived deterministically from
    ``patient_id``, ``series_description``, the geometry and a hash of the pixel values, so the
    same inputs always give the same UIDs. File names are hashes of the SOP Instance UID: they do
    not give the slice order on purpose, readers must sort by position.

    Args:
        volume: the scan; its voxels are taken as HU (a ``Units.DISPLAY`` volume is written as is).
        out_dir: folder to write into (created if needed).
        patient_id: PatientID (and PatientName) of every file.
        series_uid: SeriesInstanceUID; None derives one (see above).
        study_uid: StudyInstanceUID; None derives one from ``patient_id`` and the series.
        series_description: SeriesDescription.
        modality: Modality, "CT" unless you want a reader to meet something else.
        transfer_syntax: "explicit_le" (uncompressed, default), "rle" (RLE Lossless),
            "jpeg2000" (JPEG 2000 Lossless via pylibjpeg-openjpeg; slices of at least 32x32)
            or "jpegls" (JPEG-LS Lossless; needs the ``pyjpegls`` package).

    Returns:
        The written paths, in slice order (axis 0 ascending).

    Raises:
        ValueError: unknown ``transfer_syntax``, a missing encoder, or voxel values that are not
            finite or do not fit int16 after the -1024 intercept.
    """
    if transfer_syntax not in _TRANSFER_SYNTAXES:
        raise ValueError(
            f"unknown transfer_syntax {transfer_syntax!r}; choose one of {', '.join(_TRANSFER_SYNTAXES)}"
        )
    ts_uid, plugin = _TRANSFER_SYNTAXES[transfer_syntax]
    if ts_uid != ExplicitVRLittleEndian:
        from pydicom.pixels import get_encoder

        encoder = get_encoder(ts_uid)
        if not encoder.is_available:
            raise ValueError(
                f"transfer_syntax {transfer_syntax!r} needs an encoder that is not installed "
                f"({'; '.join(encoder.missing_dependencies)}); use 'explicit_le', 'rle' or 'jpeg2000'"
            )

    voxels = volume.voxels
    if transfer_syntax == "jpeg2000" and min(voxels.shape[1:]) < 32:
        # openjpeg's encoder always uses 6 wavelet resolutions, which need 32 pixels per side.
        raise ValueError(f"jpeg2000 needs slices of at least 32x32 pixels, got {voxels.shape[1:]}; use 'rle'")
    if not np.all(np.isfinite(voxels)):
        raise ValueError("volume has NaN or infinite voxels; DICOM int16 pixels cannot hold them")
    intercept = -1024.0
    stored_f = np.rint(voxels.astype(np.float64) - intercept)
    lo, hi = float(stored_f.min()), float(stored_f.max())
    if lo < _INT16_MIN or hi > _INT16_MAX:
        raise ValueError(
            f"voxel range {lo + intercept:.0f}..{hi + intercept:.0f} does not fit int16 with intercept "
            f"{intercept:.0f} (allowed {_INT16_MIN + intercept:.0f}..{_INT16_MAX + intercept:.0f})"
        )
    stored = stored_f.astype(np.int16)

    normal, col_cos, row_cos = _affine_parts(volume)
    if float(np.dot(normal, np.cross(row_cos, col_cos))) < 0:
        # DICOM has no slice-normal attribute: readers take row x column as the normal, so a stack
        # running the other way (e.g. an identity direction) comes back in reverse slice order.
        logger.warning(
            "direction axis 0 %s points against row x column %s: readers will return the slices in "
            "reverse order (geometry stays consistent); use the canonical direction of ctcovid.types",
            normal.tolist(),
            np.cross(row_cos, col_cos).tolist(),
        )
    sz, sy, sx = volume.spacing_mm
    origin = np.asarray(volume.origin_mm, dtype=np.float64)
    if series_uid is None:
        h = hashlib.blake2b(stored.tobytes(), digest_size=16).hexdigest()
        geom = repr((volume.shape, volume.spacing_mm, volume.origin_mm, volume.direction.round(9).tolist()))
        series_uid = generate_uid(entropy_srcs=["series", patient_id, series_description, geom, h])
    if study_uid is None:
        study_uid = generate_uid(entropy_srcs=["study", patient_id, series_uid])
    frame_uid = generate_uid(entropy_srcs=["frame", series_uid])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    iop = [_ds_str(v) for v in (*row_cos, *col_cos)]
    paths: list[Path] = []
    for k in range(stored.shape[0]):
        sop_uid = generate_uid(entropy_srcs=["instance", series_uid, str(k)])
        ds = _slice_dataset(
            stored[k],
            sop_uid=sop_uid,
            series_uid=series_uid,
            study_uid=study_uid,
            frame_uid=frame_uid,
            patient_id=patient_id,
            series_description=series_description,
            modality=modality,
            instance_number=k + 1,
            position=origin + normal * sz * k,
            iop=iop,
            pixel_spacing=(sy, sx),
            thickness=sz,
            intercept=intercept,
            display=volume.units is Units.DISPLAY,
        )
        if ts_uid != ExplicitVRLittleEndian:
            ds.compress(ts_uid, stored[k], encoding_plugin=plugin, generate_instance_uid=False)
        name = hashlib.sha1(sop_uid.encode()).hexdigest()[:20] + ".dcm"
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d DICOM files (%s) to %s", len(paths), transfer_syntax, out)
    return paths


def _slice_dataset(
    pixels: np.ndarray,
    *,
    sop_uid: str,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    patient_id: str,
    series_description: str,
    modality: str,
    instance_number: int,
    position: np.ndarray,
    iop: list[str],
    pixel_spacing: tuple[float, float],
    thickness: float,
    intercept: float,
    display: bool,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_IMPLEMENTATION_UID)

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20200101"
    ds.StudyTime = "000000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "ctcovid"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.SliceThickness = _ds_str(thickness)
    ds.KVP = ""
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds_str(float(v)) for v in position]
    ds.ImageOrientationPatient = iop
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [_ds_str(pixel_spacing[0]), _ds_str(pixel_spacing[1])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds_str(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "US" if display else "HU"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _ras_affine(volume: Volume) -> np.ndarray:
    """4x4 RAS affine of the (x, y, z)-ordered array ``voxels.transpose(2, 1, 0)``."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    d = np.asarray(volume.direction, dtype=np.float64)
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)
    # NIfTI index (i, j, k) = our array index (axis2, axis1, axis0): reverse the columns.
    cols = (d * spacing)[:, ::-1]
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ cols
    affine[:3, 3] = lps_to_ras @ np.asarray(volume.origin_mm, dtype=np.float64)
    return affine


def write_nifti(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with a RAS affine from its LPS geometry.

    The array is stored in the usual NIfTI order ``(x, y, z)`` (our ``voxels.transpose(2, 1, 0)``)
    and both qform and sform hold the affine, so other tools (ITK-SNAP, 3D Slicer, nibabel) place
    it correctly. Integer-valued volumes that fit int16 are stored as int16 (smaller files, exact);
    anything else as float32 (exact too).
    """
    import nibabel as nib

    out = Path(path)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI path must end with .nii or .nii.gz, got '{out}'")
    out.parent.mkdir(parents=True, exist_ok=True)
    voxels = volume.voxels
    data: np.ndarray = voxels
    finite = bool(np.all(np.isfinite(voxels)))
    exact_int16 = (
        finite
        and voxels.size > 0
        and np.array_equal(voxels, np.rint(voxels))
        and voxels.min() >= _INT16_MIN
        and voxels.max() <= _INT16_MAX
    )
    if exact_int16:
        data = voxels.astype(np.int16)
    affine = _ras_affine(volume)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, out)
    return out


def write_slices(
    volume: Volume,
    out_dir: str | Path,
    *,
    window_hu: tuple[float, float] = (-600.0, 1500.0),
    ext: str = "png",
    start_index: int = 0,
) -> list[Path]:
    """Write each axis-0 slice as an 8-bit grayscale image named ``f"{start_index + k}.{ext}"``.

    Names are natural numbers without zero padding, as in CC-CCII; the reader sorts them
    naturally, so image order = ascending axis 0. HU volumes are windowed with
    ``window_hu = (level, width)``: ``level - width/2`` maps to 0 and ``level + width/2`` to 255
    (clipped, rounded). A volume already in ``Units.DISPLAY`` is written as is (clipped to
    0..255). Geometry is not stored: slice images have none.
    """
    from PIL import Image

    ext = ext.lower().lstrip(".")
    if ext not in {"png", "jpg", "jpeg", "bmp", "tif", "tiff"}:
        raise ValueError(f"unsupported slice image extension {ext!r}; use png, jpg, bmp or tif")
    level, width = float(window_hu[0]), float(window_hu[1])
    if width <= 0:
        raise ValueError(f"window width must be positive, got window_hu={window_hu}")
    if volume.units is Units.DISPLAY:
        img8 = np.clip(np.rint(volume.voxels), 0, 255).astype(np.uint8)
    else:
        scaled = (volume.voxels.astype(np.float64) - (level - width / 2.0)) * 255.0 / width
        img8 = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(img8.shape[0]):
        p = out / f"{start_index + k}.{ext}"
        Image.fromarray(img8[k]).save(p)  # uint8 2D -> mode "L"
        paths.append(p)
    return paths
