"""What every cohort importer shares: the result type, the registry, and a cheap scan probe.

An importer walks a dataset folder as the dataset publishes it and returns manifest rows plus the
list of what it skipped and why. It never decodes whole volumes: :func:`probe_scan` counts slices
from file listings and headers, so importing 100k slices takes seconds, not an hour.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ctcovid.data.manifest import ManifestRow
from ctcovid.errors import ConfigError, ManifestError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
Progress = Callable[[int, int], None]


@dataclass
class ImportResult:
    """Rows imported, what was skipped and why; ``found == len(rows) + len(skipped)``."""

    kind: str
    root: str
    rows: list[ManifestRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.rows) + len(self.skipped)


Importer = Callable[..., ImportResult]
_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str) -> Callable[[Importer], Importer]:
    def deco(fn: Importer) -> Importer:
        if name in _IMPORTERS:
            raise ValueError(f"importer {name!r} is already registered")
        _IMPORTERS[name] = fn
        return fn

    return deco


def get_importer(name: str) -> Importer:
    if name not in _IMPORTERS:
        raise ConfigError(f"unknown cohort kind {name!r}; available: {', '.join(sorted(_IMPORTERS))}")
    return _IMPORTERS[name]


def list_importers() -> list[str]:
    return sorted(_IMPORTERS)


def require_dir(root: str | Path, what: str) -> Path:
    p = Path(root)
    if not p.exists():
        raise ManifestError(f"{what} root '{p}' does not exist")
    if not p.is_dir():
        raise ManifestError(f"{what} root '{p}' is not a folder")
    return p


@dataclass
class Probe:
    """What a quick look at a scan path found."""

    format: str
    n_slices: int
    flags: list[str] = field(default_factory=list)
    error: str | None = None


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _probe_itk(path: Path) -> Probe:
    """MetaImage / NRRD: the slice count from the header (SimpleITK reads no pixels for it)."""
    kind = "nrrd" if path.suffix.lower() in (".nrrd", ".nhdr") else "metaimage"
    try:
        import SimpleITK as sitk
    except ImportError:
        return Probe(kind, 0, error="reading MetaImage/NRRD needs SimpleITK: pip install 'ctcovid[itk]'")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        return Probe(kind, 0, error=f"unreadable {kind} header ({str(e).strip().splitlines()[-1][:120]})")
    size = reader.GetSize()
    if len(size) < 3:
        return Probe(kind, 0, error=f"{kind} image is {len(size)}D, not a volume")
    return Probe(kind, int(size[2]))  # ITK size is (x, y, z): z counts the slices of an axial scan


def probe_scan(path: Path) -> Probe:
    """Format and slice count of a scan path without decoding pixels; ``error`` when unusable."""
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            try:
                import nibabel as nib

                shape = nib.load(str(path)).header.get_data_shape()  # type: ignore[attr-defined]  # header only
            except Exception as e:  # nibabel raises many types on corrupt headers
                return Probe("nifti", 0, error=f"unreadable NIfTI header ({type(e).__name__})")
            if len(shape) < 3:
                return Probe("nifti", 0, error=f"NIfTI is {len(shape)}D, not a volume")
            return Probe("nifti", int(shape[2]))
        if name.endswith((".npy", ".npz")):
            return Probe("numpy", 0)
        if name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
            return _probe_itk(path)
        return Probe(
            "unknown",
            0,
            error="not a scan file (expected .nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr, .npy, .npz or a folder)",
        )
    if not path.is_dir():
        return Probe("unknown", 0, error="path does not exist")
    files = [f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")]
    if not files:
        return Probe("unknown", 0, error="empty folder")
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
    empty = [f for f in files if f.stat().st_size == 0]
    flags = [f"empty_files={len(empty)}"] if empty else []
    if images and len(images) >= len(files) / 2:
        n = len([f for f in images if f.stat().st_size > 0])
        if n == 0:
            return Probe("slices", 0, flags, error="all slice images are empty (0 bytes)")
        return Probe("slices", n, flags)
    dicoms = [f for f in files if f.stat().st_size > 0 and _is_dicom(f)]
    if dicoms:
        return Probe("dicom", len(dicoms), flags)
    return Probe("unknown", 0, flags, error="no slice images or DICOM files in folder")


_NUM = re.compile(r"(\d+)")


def natural_key(text: str) -> list[object]:
    """Sort key that orders 'scan2' before 'scan10'."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUM.split(text)]


def is_segmented(slice_dir: Path) -> bool:
    """True when a slice folder looks already lung-segmented (CC-CCII ships such scans).

    A complete chest slice in a lung or mediastinal window shows bright soft tissue and bone around
    the lungs; a lung-segmented slice keeps only the lung fields on a black background. We look at
    the middle slice: under 2% of pixels brighter than 150/255 means no body wall, i.e. segmented.
    """
    import numpy as np
    from PIL import Image

    images = sorted(
        (f for f in slice_dir.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.stat().st_size > 0),
        key=lambda f: natural_key(f.name),
    )
    if not images:
        return False
    try:
        with Image.open(images[len(images) // 2]) as im:
            a = np.asarray(im.convert("L"), dtype=np.uint8)
    except OSError:
        return False
    return bool((a > 150).mean() < 0.02)


def flag_patients(rows: list[ManifestRow], *, min_slices: int) -> list[ManifestRow]:
    """Add cohort-level flags: few slices, several scans per patient, likely re-reconstructions."""
    per_patient: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        per_patient[r.patient_id].append(r)
    out = []
    for r in rows:
        flags: list[str] = []
        if 0 < r.n_slices < min_slices:
            flags.append("few_slices")
        siblings = per_patient[r.patient_id]
        if len(siblings) > 1:
            flags.append(f"multi_scan_patient={len(siblings)}")
            same = Counter(s.n_slices for s in siblings)
            # Several reconstructions of one study (kernels, thicknesses) share the slice count.
            if r.n_slices and same[r.n_slices] > 1:
                flags.append("possible_reconstruction")
        out.append(r.with_flags(*flags) if flags else r)
    return out
