"""Results back into the clinic: a DICOM Structured Report per prediction, and the heatmap as a
DICOM series that lines up with the input slice by slice.

* :func:`write_sr` writes a Comprehensive SR holding a TID 1500 measurement report (built with
  ``highdicom``): the predicted class (CODE), the probability of each class (NUM, unit "1"), the
  model, the checkpoint's SHA-256 and the ctcovid version (TID 4019 algorithm identification),
  the input series (UIDREF, and the evidence sequence naming every input instance), the quality
  and referral fields where the prediction has them, and a TEXT item saying that this is the
  output of research software, not for clinical use.
* :func:`write_heatmap_series` writes one RGB Secondary Capture image per input slice: the input
  slice in the lung window with the heat fused over it in colour (the same look as the PNG
  montage), with the input slice's ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
  SliceThickness and FrameOfReferenceUID, its pixels in the input slice's own row/column order,
  and a Source Image Sequence naming the input slice it was derived from.

Both go into the input's study: the Patient, Clinical Trial Subject, General Study, Patient Study
and Clinical Trial Study modules are copied from the input unchanged (highdicom's
``copy_patient_and_study_information``); only Type 2 attributes the input lacks are added,
empty, so nothing identifying is invented. Series and SOP Instance UIDs are new. The input files
are only read, never written.

Input that is not DICOM (NIfTI, slice images, arrays) is refused with :class:`NotDicomError`:
such a scan has no study and no patient to attach results to, and a new study with an empty
patient would land in a PACS as an orphan nobody can match to the person scanned. Write the
NIfTI/JSON results for those instead.

Inputs whose files break DICOM (the public COVID-CT-MD sample has UUID strings as Study and
Series Instance UIDs, and empty SOP Instance and Frame of Reference UIDs) are written all the
same: the identifiers are copied as they are (a PACS files by the string it has), instances
without a SOP Instance UID cannot be referenced and are left out of the references (a warning is
logged and written into the SR), and an empty Frame of Reference UID stays out of the heatmap
series. The only errors ``dciodvfy`` then reports on our files are about those copied values (the
input fails on the same values).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ctcovid.errors import CtcovidError, MissingExtraError
from ctcovid.types import ScanFormat, Volume

if TYPE_CHECKING:
    from ctcovid.predict.explain import Explanation
    from ctcovid.predict.predictor import Prediction, Predictor, Progress

log = logging.getLogger(__name__)

#: Private coding scheme of the concepts no standard code fits (probabilities, the class labels).
CODING_SCHEME = "99CTCOVID"
RESEARCH_NOTE = (
    "Output of ctcovid, research software: not a medical device, not validated for clinical use. "
    "Do not use for diagnosis or treatment decisions."
)
SR_SERIES_NUMBER = 9901
HEATMAP_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "ctcovid AI result - RESEARCH USE ONLY"
HEATMAP_SERIES_DESCRIPTION = "ctcovid heatmap - RESEARCH USE ONLY"
_MANUFACTURER = "ctcovid (research software)"
# Type 2 attributes of the modules copied from the input: when the input lacks one it is added
# empty (not invented): an SR and a Secondary Capture must carry them.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_GEOMETRY_TOL = 1e-3  # |cosine| difference accepted between the volume's axes and a slice's IOP


class NotDicomError(CtcovidError):
    """DICOM results were asked for a scan that was not read from DICOM."""


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as e:
        raise MissingExtraError("highdicom", "dicom") from e
    return highdicom


class _Chatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pydicom":
            return not record.getMessage().startswith("Invalid value for VR")
        return record.levelno >= logging.WARNING


# highdicom.base logs seven INFO lines per image written ("copy attributes of module ...").
_CHATTY_LOGGERS = ("pydicom", "highdicom.base")


@contextmanager
def _quiet() -> Iterator[None]:
    # pydicom warns (and logs) for every non-conformant value of the input (e.g. UUID strings as
    # UIDs) each time it is read or copied; we copy them as they are on purpose, and hundreds of
    # identical lines would bury real problems (what we leave out is logged once, by build_sr).
    chatter = _Chatter()
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).addFilter(chatter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).removeFilter(chatter)


def _version() -> str:
    from ctcovid import __version__

    return __version__


# --------------------------------------------------------------------------- the input series
@dataclass
class SourceSeries:
    """The input DICOM series: its slice files and their headers, in the volume's slice order."""

    files: list[Path]
    headers: list[Dataset]

    @classmethod
    def from_volume(cls, volume: Volume) -> SourceSeries:
        """The headers of the files ``volume`` was read from (read while those files exist).

        Raises:
            NotDicomError: the volume was not read from a DICOM series.
        """
        src = volume.source
        if src is None or src.format != ScanFormat.DICOM or not src.slice_files:
            kind = src.format.value if src is not None else "an in-memory volume"
            where = f"'{src.path}'" if src is not None else "this scan"
            raise NotDicomError(
                f"cannot write DICOM results for {where}: it is {kind}, not a DICOM series, so there "
                "is no study or patient to attach them to; pass the DICOM series, or use the "
                "NIfTI/JSON outputs"
            )
        if len(src.slice_files) != volume.shape[0]:
            raise CtcovidError(
                f"'{src.path}': {len(src.slice_files)} slice files for a volume of {volume.shape[0]} "
                "slices; DICOM results need the volume exactly as read"
            )
        files = [Path(f) for f in src.slice_files]
        with _quiet():
            headers: list[Dataset] = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        return cls(files, headers)

    @property
    def first(self) -> Dataset:
        return self.headers[0]

    @property
    def study_uid(self) -> str:
        return str(self.first.get("StudyInstanceUID", ""))

    @property
    def series_uid(self) -> str:
        return str(self.first.get("SeriesInstanceUID", ""))

    def referable(self) -> list[Dataset]:
        """The headers that can be referenced: those with a SOP Instance UID and SOP Class UID."""
        return [h for h in self.headers if h.get("SOPInstanceUID") and h.get("SOPClassUID")]

    def patient_study(self) -> Dataset:
        """The first header, with the Type 2 patient/study attributes it lacks added empty."""
        ds = Dataset()
        ds.update(self.first)
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
        return ds


def patient_study_keywords(sop_class_uid: str) -> list[str]:
    """Keywords of the root attributes of the Patient and Study modules of ``sop_class_uid``'s IOD
    (what :meth:`highdicom.SOPClass.copy_patient_and_study_information` copies)."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    attrs = get_module_attribute_map()
    return sorted(
        {
            a["keyword"]
            for m in modules
            if m["ie"] in ("Patient", "Study")
            for a in attrs[m["key"]]
            if not a["path"]
        }
    )


# --------------------------------------------------------------------------- checkpoint identity
def checkpoint_identity(predictor: Predictor) -> tuple[str, str]:
    """``(what, sha256)``: the SHA-256 of the checkpoint file, or of the weights when the predictor
    was built without a file."""
    path = predictor.meta.get("checkpoint")
    if path and Path(path).is_file():
        st = Path(path).stat()
        return "checkpoint file sha256", _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    h = hashlib.sha256()
    for name, t in predictor.model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return "model weights sha256", h.hexdigest()


@lru_cache(maxsize=8)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:  # mtime and size key the cache
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- structured report
def _code(value: str, meaning: str) -> Any:
    return _highdicom().sr.CodedConcept(value, CODING_SCHEME, meaning)


def _safe_code_value(label: str) -> str:
    # Code Value is SH (16 characters, no backslash); the meaning keeps the label as it is.
    return label.replace("\\", "/")[:16] or "?"


@_quiet()
def build_sr(
    prediction: Prediction,
    predictor: Predictor,
    source: SourceSeries,
    *,
    heatmap_series_uid: str | None = None,
) -> Dataset:
    """The Comprehensive SR of ``prediction`` for the input ``source`` (see the module docstring)."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    if not prediction.ok or prediction.label is None:
        raise CtcovidError(
            f"scan '{prediction.scan_id}' has no prediction ({prediction.error}); no report written"
        )
    what, sha = checkpoint_identity(predictor)
    version = _version()
    labels = list(prediction.probs)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=pydicom.uid.generate_uid(entropy_srcs=["ctcovid", predictor.model_name, sha]),
            name="ctcovid",
            manufacturer_name=_MANUFACTURER,
            model_name=predictor.model_name,
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"ctcovid {predictor.model_name}",
        version=version,
        parameters=[f"{what} {sha}", f"task {prediction.task}", f"classes {', '.join(labels)}"],
        manufacturer=_MANUFACTURER,
    )
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    codes_ = [f"P_{_safe_code_value(lab)}"[:16] for lab in labels]
    if len(set(codes_)) < len(codes_):  # long labels cut to 16 characters collide: number them
        codes_ = [f"P_{i}" for i in range(len(labels))]
    measurements = [
        hd.sr.Measurement(name=_code(c, f"Probability of {lab}"), value=float(p), unit=unit)
        for c, (lab, p) in zip(codes_, prediction.probs.items(), strict=True)
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=_code("CLASS", "Predicted class"),
            value=_code(_safe_code_value(prediction.label), prediction.label),
        )
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"ctcovid {prediction.task} of series {source.series_uid}"
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept("24627-2", "LN", "CT Chest"),
        imaging_measurements=[group],
    )
    root = report[0]
    # TID 1500 is extensible: the notes a reader must see go at the root, beside the measurements.
    for item in _notes(prediction, predictor.model_name, source, heatmap_series_uid, f"{what} {sha}"):
        root.ContentSequence.append(item)

    referable = source.referable()
    if len(referable) < len(source.headers):
        log.warning(
            "%s: %d of %d input slices have no SOP Instance UID and cannot be referenced",
            source.files[0].parent,
            len(source.headers) - len(referable),
            len(source.headers),
        )
    first = source.patient_study()
    with _quiet():
        sr = hd.sr.ComprehensiveSR(
            evidence=[first, *referable] if referable else [first],
            content=report,
            series_instance_uid=hd.UID(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=_MANUFACTURER,
            is_complete=True,
            is_final=False,  # unverified research output: never a final report
            is_verified=False,
            series_description=SR_SERIES_DESCRIPTION,
            software_versions=f"ctcovid {version}",
        )
    if referable:
        # ``first`` stood in for the patient/study copy only; list each instance once.
        sr.CurrentRequestedProcedureEvidenceSequence = _evidence(referable)
    elif "CurrentRequestedProcedureEvidenceSequence" in sr:
        del sr.CurrentRequestedProcedureEvidenceSequence  # nothing referable: no instance to list
    return sr


def _evidence(headers: Sequence[Dataset]) -> list[Dataset]:
    """Hierarchical SOP instance references (study -> series -> instances) of ``headers``."""
    series: dict[tuple[str, str], list[Dataset]] = {}
    for h in headers:
        ref = Dataset()
        ref.ReferencedSOPClassUID = h.SOPClassUID
        ref.ReferencedSOPInstanceUID = h.SOPInstanceUID
        series.setdefault((str(h.StudyInstanceUID), str(h.SeriesInstanceUID)), []).append(ref)
    studies: dict[str, list[Dataset]] = {}
    for (study, uid), refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedSOPSequence = refs
        studies.setdefault(study, []).append(item)
    out = []
    for study, items in studies.items():
        item = Dataset()
        item.StudyInstanceUID = study
        item.ReferencedSeriesSequence = items
        out.append(item)
    return out


def _notes(
    prediction: Prediction,
    model_name: str,
    source: SourceSeries,
    heatmap_series_uid: str | None,
    checkpoint: str,
) -> list[Any]:
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    text = hd.sr.TextContentItem
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[Any] = [
        text(_code("RUO", "Research use statement"), RESEARCH_NOTE, contains),
        text(_code("MODEL", "Model"), f"ctcovid {_version()}, model {model_name}", contains),
        text(_code("CKPT", "Checkpoint identity"), checkpoint, contains),
    ]
    if source.series_uid:
        items.append(hd.sr.UIDRefContentItem(codes.DCM.SeriesInstanceUID, source.series_uid, contains))
    items.append(
        text(
            _code("INPUT", "Input series"),
            f"series {source.series_uid or '(no SeriesInstanceUID)'} of study "
            f"{source.study_uid or '(no StudyInstanceUID)'}, {len(source.headers)} slices",
            contains,
        )
    )
    if heatmap_series_uid:
        items.append(text(_code("HEATMAP", "Heatmap series"), heatmap_series_uid, contains))
    missing = len(source.headers) - len(source.referable())
    if missing:
        items.append(
            text(
                _code("NOREF", "Unreferenced input"),
                f"{missing} of {len(source.headers)} input slices have no SOP Instance UID: "
                "the input is referenced by its series only",
                contains,
            )
        )
    fields = prediction.to_dict()
    for key, meaning in (("quality", "Input quality"), ("refer", "Referral")):
        value = fields.get(key, getattr(prediction, key, None))
        if value is not None:
            value = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
            items.append(text(_code(key.upper()[:16], meaning), value, contains))
    for w in prediction.warnings:
        items.append(text(_code("WARNING", "Input warning"), w, contains))
    return items


@_quiet()
def write_sr(
    prediction: Prediction,
    predictor: Predictor,
    volume: Volume | SourceSeries,
    out: str | Path,
    *,
    heatmap_series_uid: str | None = None,
) -> Path:
    """Write the SR of ``prediction`` for the DICOM scan ``volume`` (or its :class:`SourceSeries`).

    ``out`` is a folder (the file is ``<scan stem>_sr.dcm`` in it) or a ``.dcm`` path.

    Raises:
        NotDicomError: ``volume`` was not read from DICOM.
        MissingExtraError: highdicom is not installed (``pip install 'ctcovid[dicom]'``).
    """
    from ctcovid.predict.explain import safe_stem

    source = volume if isinstance(volume, SourceSeries) else SourceSeries.from_volume(volume)
    t0 = time.perf_counter()
    sr = build_sr(prediction, predictor, source, heatmap_series_uid=heatmap_series_uid)
    path = Path(out)
    if path.suffix.lower() != ".dcm":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{safe_stem(prediction.scan_id)}_sr.dcm"
    with _quiet():
        sr.save_as(path, enforce_file_format=True)
    log.info("SR of %s written to %s in %.2f s", prediction.scan_id, path, time.perf_counter() - t0)
    return path


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


# --------------------------------------------------------------------------- many scans
@dataclass
class DicomResult:
    """One scan's prediction and the DICOM files written for it (``error``: why none were)."""

    prediction: Prediction
    files: list[Path]
    error: str | None = None


def predict_to_dicom(
    predictor: Predictor,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    progress: Progress | None = None,
) -> list[DicomResult]:
    """Predict every scan at or below ``paths`` and write an SR for each DICOM one into ``out_dir``.

    Scans are read one at a time and the SR is written while the input files are at hand (a zip
    is unpacked only once). Never raises for one scan: a scan that cannot be read or predicted
    comes back with ``prediction.error``, a scan that is not DICOM with ``error`` (the one-line
    reason) and its prediction.
    """
    from ctcovid.predict.inputs import find_scans, open_scan, scan_id_of
    from ctcovid.predict.predictor import Prediction, describe_error

    jobs: list[tuple[str, Path, str | None]] = []
    for p in paths:
        try:
            jobs.extend((sid, sp, None) for sid, sp in find_scans(p))
        except CtcovidError as e:
            jobs.append((scan_id_of(Path(p)), Path(p), describe_error(e)))
    results = []
    for k, (sid, path, err) in enumerate(jobs):
        try:
            if err is not None:
                results.append(DicomResult(Prediction.failure(sid, err, task=predictor.task, path=path), []))
                continue
            t0 = time.perf_counter()
            with open_scan(path) as volume:
                read_s = time.perf_counter() - t0
                pred = predictor.predict(volume, sid, path=str(path))
                pred.timings_s = {"read": round(read_s, 4), **pred.timings_s}
                try:
                    results.append(DicomResult(pred, [write_sr(pred, predictor, volume, out_dir)]))
                except NotDicomError as e:
                    results.append(DicomResult(pred, [], str(e)))
        except MissingExtraError:
            raise  # the same for every scan: say it once
        except Exception as e:  # one bad scan must not stop the others; it is reported instead
            log.debug("scan %s failed", sid, exc_info=True)
            results.append(DicomResult(Prediction.failure(sid, e, task=predictor.task, path=path), []))
        finally:
            if progress is not None:
                progress(k + 1, len(jobs))
    return results
