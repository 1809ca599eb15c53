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

The code lives in :mod:`.dicom_common` (input series, copied modules, codes, identity),
:mod:`.dicom_sr` (the report, and :func:`predict_to_dicom` for many scans) and
:mod:`.dicom_heatmap` (the heatmap series); this module is their public face.
"""

from ctcovid.predict.dicom_common import (
    CODING_SCHEME,
    HEATMAP_SERIES_DESCRIPTION,
    HEATMAP_SERIES_NUMBER,
    RESEARCH_NOTE,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    NotDicomError,
    SourceSeries,
    checkpoint_identity,
    patient_study_keywords,
)
from ctcovid.predict.dicom_heatmap import (
    build_heatmap_series,
    fuse,
    slice_in_input_order,
    write_explanation,
    write_heatmap_series,
)
from ctcovid.predict.dicom_sr import DicomResult, build_sr, predict_to_dicom, write_sr

__all__ = [
    "CODING_SCHEME",
    "HEATMAP_SERIES_DESCRIPTION",
    "HEATMAP_SERIES_NUMBER",
    "RESEARCH_NOTE",
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_NUMBER",
    "DicomResult",
    "NotDicomError",
    "SourceSeries",
    "build_heatmap_series",
    "build_sr",
    "checkpoint_identity",
    "fuse",
    "patient_study_keywords",
    "predict_to_dicom",
    "slice_in_input_order",
    "write_explanation",
    "write_heatmap_series",
    "write_sr",
]
