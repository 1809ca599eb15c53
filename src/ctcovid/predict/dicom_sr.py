"""The DICOM Structured Report of a prediction (see :mod:`ctcovid.predict.dicom_out`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset

from ctcovid.errors import CtcovidError, MissingExtraError
from ctcovid.types import Volume

if TYPE_CHECKING:
    from ctcovid.predict.predictor import Prediction, Predictor, Progress

from ctcovid.predict.dicom_common import (
    _MANUFACTURER,
    CODING_SCHEME,
    RESEARCH_NOTE,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    NotDicomError,
    SourceSeries,
    _highdicom,
    _quiet,
    _version,
    checkpoint_identity,
)

log = logging.getLogger(__name__)


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
        why = prediction.error or "; ".join(prediction.refer_reasons) or "no label"
        raise CtcovidError(f"scan '{prediction.scan_id}' has no prediction ({why}); no report written")
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
    for key, meaning in (
        ("quality", "Input quality"),
        ("ood_score", "Out-of-distribution score"),
        ("uncertainty", "Uncertainty"),
        ("refer", "Referral"),
        ("refer_reasons", "Referral reasons"),
    ):
        value = fields.get(key, getattr(prediction, key, None))
        if key == "quality" and isinstance(value, dict):  # the contract's two fields, not the statistics
            value = {"ok": value.get("ok"), "problems": value.get("problems", [])}
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
