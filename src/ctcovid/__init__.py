"""ctcovid: COVID-19 diagnosis and severity from chest CT with 3D convolutional networks.

The public API is small on purpose; heavier pieces (models, training, serving) live in
subpackages and load lazily.
"""

from ctcovid.errors import ConfigError, CtcovidError, ManifestError, ScanReadError
from ctcovid.types import (
    DIAGNOSIS_LABELS,
    SEVERITY_LABELS,
    Diagnosis,
    ScanFormat,
    ScanSource,
    Severity,
    Units,
    Volume,
    severity_from_score,
)

__version__ = "0.1.0"


def load_volume(path, **kwargs):  # type: ignore[no-untyped-def]
    """Read a scan (DICOM folder, NIfTI, slice-image folder, .npy/.npz); see :func:`ctcovid.io.load_volume`."""
    from ctcovid.io import load_volume as _load

    return _load(path, **kwargs)


__all__ = [
    "DIAGNOSIS_LABELS",
    "SEVERITY_LABELS",
    "ConfigError",
    "CtcovidError",
    "Diagnosis",
    "ManifestError",
    "ScanFormat",
    "ScanReadError",
    "ScanSource",
    "Severity",
    "Units",
    "Volume",
    "__version__",
    "load_volume",
    "severity_from_score",
]
