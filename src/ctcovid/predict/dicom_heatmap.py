"""The heatmap as a DICOM series aligned with the input slice by slice (see :mod:`ctcovid.predict.dicom_out`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ctcovid.errors import CtcovidError
from ctcovid.types import Volume

if TYPE_CHECKING:
    from ctcovid.predict.explain import Explanation
    from ctcovid.predict.predictor import Predictor

from ctcovid.predict.dicom_common import (
    _GEOMETRY_TOL,
    _MANUFACTURER,
    HEATMAP_SERIES_DESCRIPTION,
    HEATMAP_SERIES_NUMBER,
    RESEARCH_NOTE,
    SourceSeries,
    _highdicom,
    _quiet,
    _version,
)
from ctcovid.predict.dicom_sr import write_sr

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- heatmap series
def slice_in_input_order(
    volume: Volume, k: int, header: Dataset, array: np.ndarray | None = None
) -> np.ndarray:
    """Slice ``k`` of ``array`` (default: the voxels; any array on the volume's grid) with its rows
    and columns in the order of the input file ``header``: element ``[i, j]`` is the voxel at the
    centre of that file's pixel (row i, column j).

    Found from the geometry (the volume's direction against the file's ImageOrientationPatient),
    not assumed: a reader that flips or swaps the in-plane axes gives the same answer.

    Raises:
        CtcovidError: the file's rows and columns do not run along the volume's in-plane axes, or
            its size differs from the volume's slice.
    """
    a = volume.voxels if array is None else array
    iop = np.asarray([float(v) for v in header.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])])
    steps = []
    for cosine in (iop[3:], iop[:3]):  # down a column (next row), along a row (next column)
        along = volume.direction.T @ cosine  # components on the array axes (z, y, x)
        axis = int(np.argmax(np.abs(along)))
        if axis == 0 or abs(abs(along[axis]) - 1.0) > _GEOMETRY_TOL:
            raise CtcovidError(
                f"slice {k} ('{getattr(header, 'filename', '?')}'): "
                f"ImageOrientationPatient {list(iop)} does not run along the volume's in-plane axes; "
                "cannot line the heatmap up with it"
            )
        steps.append((axis, int(np.sign(along[axis]))))
    (row_axis, row_sign), (col_axis, col_sign) = steps
    if row_axis == col_axis:
        raise CtcovidError(f"slice {k}: degenerate ImageOrientationPatient {list(iop)}")
    s = a[k]  # (H, W): array axes 1, 2
    if row_axis == 2:  # the file's rows run along the volume's x: transpose
        s = s.T
    s = s[::row_sign, ::col_sign]
    rows, cols = int(header.get("Rows", s.shape[0])), int(header.get("Columns", s.shape[1]))
    if s.shape != (rows, cols):
        raise CtcovidError(
            f"slice {k}: the file is {rows}x{cols} pixels, the volume's slice {s.shape[0]}x{s.shape[1]}"
        )
    return s


def fuse(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)``: ``gray`` (in [0, 1]) with ``heat`` (in [0, 1]) over it in the jet
    colour map, opacity ``0.55 * heat`` (as in the PNG montage); zero heat leaves the grey."""
    from matplotlib import colormaps

    h = np.clip(heat, 0.0, 1.0)
    alpha = (0.55 * h)[..., None]
    rgb = gray[..., None] * (1 - alpha) + colormaps["jet"](h)[..., :3] * alpha
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _orientation_letters(cosine: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(cosine)))
    return ("LR", "PA", "HF")[axis][0 if cosine[axis] > 0 else 1]


#: Transfer syntaxes of the heatmap series: uncompressed (every viewer and PACS reads it; 0.75 MiB
#: a 512x512 slice) or JPEG 2000 lossless (about 6x smaller on the real chest CT; OHIF, Weasis,
#: Horos and GDCM-based readers decode it, DCMTK-only tools may not).
HEATMAP_SYNTAXES: tuple[str, ...] = ("explicit_le", "jpeg2000")


@_quiet()
def build_heatmap_series(
    explanation: Explanation, source: SourceSeries, *, transfer_syntax: str = "explicit_le"
) -> list[Dataset]:
    """One RGB Secondary Capture dataset per input slice (see the module docstring)."""
    from ctcovid.preprocess.intensity import LUNG_WINDOW_HU, apply_window

    hd = _highdicom()
    if transfer_syntax not in HEATMAP_SYNTAXES:
        raise CtcovidError(
            f"unknown transfer syntax {transfer_syntax!r} for the heatmap series; valid: {', '.join(HEATMAP_SYNTAXES)}"
        )
    j2k = transfer_syntax == "jpeg2000"
    vol = explanation.volume
    if explanation.heat.shape != vol.shape:
        raise CtcovidError(f"heatmap shape {explanation.heat.shape} differs from the scan's {vol.shape}")
    series_uid = hd.UID()
    ps = source.patient_study()
    p = explanation.prediction
    description = (
        f"ctcovid {_version()} {explanation.method} heatmap for class {explanation.target} "
        f"(predicted {p.label}, p={p.probs.get(p.label or '', 0.0):.3f}); {RESEARCH_NOTE}"
    )
    out = []
    for k, h in enumerate(source.headers):
        if "ImagePositionPatient" not in h or "ImageOrientationPatient" not in h:
            raise CtcovidError(
                f"'{source.files[k]}' has no ImagePositionPatient/ImageOrientationPatient: a heatmap "
                "series cannot be lined up with it; use the NIfTI heatmap (--out) instead"
            )
        hu = slice_in_input_order(vol, k, h)
        heat = slice_in_input_order(vol, k, h, explanation.heat)
        rgb = fuse(apply_window(hu, *LUNG_WINDOW_HU), heat)
        iop = np.asarray([float(v) for v in h.ImageOrientationPatient])
        with _quiet():
            sc = hd.sc.SCImage(
                pixel_array=rgb,
                # YBR_RCT: JPEG 2000's reversible colour transform (decoders return RGB)
                photometric_interpretation="YBR_RCT" if j2k else "RGB",
                bits_allocated=8,
                coordinate_system="PATIENT",
                study_instance_uid=ps.StudyInstanceUID,
                series_instance_uid=series_uid,
                series_number=HEATMAP_SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=k + 1,
                manufacturer=_MANUFACTURER,
                patient_orientation=(_orientation_letters(iop[:3]), _orientation_letters(iop[3:])),
                pixel_spacing=tuple(float(v) for v in h.PixelSpacing) if "PixelSpacing" in h else None,
                series_description=HEATMAP_SERIES_DESCRIPTION,
                software_versions=f"ctcovid {_version()}",
                transfer_syntax_uid=pydicom.uid.JPEG2000Lossless
                if j2k
                else pydicom.uid.ExplicitVRLittleEndian,
            )
            sc.copy_patient_and_study_information(ps)
        # Image Plane and Frame of Reference: not part of the SC IOD, but what viewers use to place
        # the slice and link it to the CT (dciodvfy: "not present in standard IOD", a warning).
        sc.ImagePositionPatient = h.ImagePositionPatient
        sc.ImageOrientationPatient = h.ImageOrientationPatient
        for keyword in ("SliceThickness", "SliceLocation"):
            if keyword in h and h[keyword].value is not None and h[keyword].value != "":
                setattr(sc, keyword, h[keyword].value)
        if h.get("BodyPartExamined"):  # General Series; decides whether Laterality is needed
            sc.BodyPartExamined = h.BodyPartExamined
        if "Laterality" in h:
            sc.Laterality = h.Laterality
        elif not h.get("BodyPartExamined"):
            # Type 2C, needed for a paired body part: with no body part named it cannot be ruled
            # out, so it goes in empty (unknown), as DICOM allows; nothing is made up.
            sc.Laterality = ""
        if h.get("FrameOfReferenceUID"):
            sc.FrameOfReferenceUID = h.FrameOfReferenceUID
            sc.PositionReferenceIndicator = h.get("PositionReferenceIndicator", "")
        sc.ImageType = ["DERIVED", "SECONDARY", "HEATMAP"]
        sc.BurnedInAnnotation = "NO"
        sc.LossyImageCompression = "00"
        sc.ImageComments = description
        sc.DerivationDescription = (
            f"input slice in the lung window (level {LUNG_WINDOW_HU[0]:g}, width {LUNG_WINDOW_HU[1]:g} HU) "
            f"with the {explanation.method} heatmap fused in the jet colour map"
        )[:1024]
        if h.get("SOPInstanceUID") and h.get("SOPClassUID"):
            ref = Dataset()
            ref.ReferencedSOPClassUID = h.SOPClassUID
            ref.ReferencedSOPInstanceUID = h.SOPInstanceUID
            sc.SourceImageSequence = [ref]
        out.append(sc)
    return out


@_quiet()
def write_heatmap_series(
    explanation: Explanation,
    out_dir: str | Path,
    source: SourceSeries | None = None,
    *,
    transfer_syntax: str = "explicit_le",
) -> list[Path]:
    """Write the heatmap of ``explanation`` as ``<out_dir>/<scan stem>_heatmap/HM0001.dcm ...``
    (one file per input slice, in the volume's slice order); returns the paths.

    ``source`` defaults to the files the explanation's volume was read from, which must still
    exist (write inside ``open_scan``'s ``with`` block for a zip). ``transfer_syntax``: one of
    :data:`HEATMAP_SYNTAXES`.

    Raises:
        NotDicomError: the explained scan was not read from DICOM.
        MissingExtraError: highdicom is not installed (``pip install 'ctcovid[dicom]'``).
    """
    src = source or SourceSeries.from_volume(explanation.volume)
    return _save_series(
        explanation, build_heatmap_series(explanation, src, transfer_syntax=transfer_syntax), out_dir
    )


def _save_series(explanation: Explanation, datasets: list[Dataset], out_dir: str | Path) -> list[Path]:
    from ctcovid.predict.explain import safe_stem

    t0 = time.perf_counter()
    folder = Path(out_dir) / f"{safe_stem(explanation.prediction.scan_id)}_heatmap"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with _quiet():
        for k, ds in enumerate(datasets):
            path = folder / f"HM{k + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    log.info("heatmap series of %s (%d slices) written to %s in %.2f s",
             explanation.prediction.scan_id, len(paths), folder, time.perf_counter() - t0)  # fmt: skip
    return paths


@_quiet()
def write_explanation(
    explanation: Explanation,
    predictor: Predictor,
    out_dir: str | Path,
    source: SourceSeries | None = None,
    *,
    transfer_syntax: str = "explicit_le",
) -> tuple[list[Path], Path]:
    """The heatmap series and the SR of the explained prediction (naming that series), written
    into ``out_dir``: ``(heatmap files, SR file)``. Same rules as :func:`write_heatmap_series`."""
    src = source or SourceSeries.from_volume(explanation.volume)
    datasets = build_heatmap_series(explanation, src, transfer_syntax=transfer_syntax)
    series = _save_series(explanation, datasets, out_dir)
    uid = str(datasets[0].SeriesInstanceUID)
    return series, write_sr(explanation.prediction, predictor, src, out_dir, heatmap_series_uid=uid)
