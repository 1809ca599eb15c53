"""Prediction (L3): a checkpoint's model answering for new scans, explaining itself, exported.

* :class:`Predictor` (:mod:`.predictor`): ``Predictor.from_checkpoint(path).predict_path(scan)``
  gives a :class:`Prediction` (label, probabilities, per-chunk detail, warnings);
* :func:`explain` (:mod:`.explain`): 3D Grad-CAM / Grad-CAM++ mapped back onto the input scan;
* :func:`export_model` / :func:`load_exported` (:mod:`.export`): ONNX and TorchScript files that
  carry their labels and preprocessing;
* :func:`find_scans`, :func:`extract_zip_safely` (:mod:`.inputs`): what a path or an upload holds;
* :func:`write_sr`, :func:`write_heatmap_series`, :func:`write_explanation` (:mod:`.dicom_out`):
  results as DICOM in the input's study (a Structured Report, a heatmap series); needs
  ``ctcovid[dicom]``.
"""

from ctcovid.predict.dicom_out import (
    NotDicomError,
    SourceSeries,
    predict_to_dicom,
    write_explanation,
    write_heatmap_series,
    write_sr,
)
from ctcovid.predict.explain import CAM_METHODS, Explanation, explain
from ctcovid.predict.export import (
    EXPORT_FORMATS,
    ExportedModel,
    ExportError,
    check_parity,
    export_model,
    load_exported,
)
from ctcovid.predict.heatmap import to_input_grid
from ctcovid.predict.inputs import UnsafeArchiveError, ZipLimits, extract_zip_safely, find_scans, open_scan
from ctcovid.predict.predictor import ChunkPrediction, Prediction, Predictor

__all__ = [
    "CAM_METHODS",
    "EXPORT_FORMATS",
    "ChunkPrediction",
    "Explanation",
    "ExportError",
    "ExportedModel",
    "NotDicomError",
    "Prediction",
    "Predictor",
    "SourceSeries",
    "UnsafeArchiveError",
    "ZipLimits",
    "check_parity",
    "explain",
    "export_model",
    "extract_zip_safely",
    "find_scans",
    "load_exported",
    "open_scan",
    "predict_to_dicom",
    "to_input_grid",
    "write_explanation",
    "write_heatmap_series",
    "write_sr",
]
