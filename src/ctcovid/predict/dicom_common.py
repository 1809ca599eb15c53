"""What the DICOM results share: the input series, the copied modules, codes, identity.

See :mod:`ctcovid.predict.dicom_out` for what is written and why.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset

from ctcovid.errors import CtcovidError, MissingExtraError
from ctcovid.types import ScanFormat, Volume

if TYPE_CHECKING:
    from ctcovid.predict.predictor import Predictor

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
