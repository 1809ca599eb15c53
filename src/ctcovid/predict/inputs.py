"""What ``predict`` accepts: finding the scans under a path, and unpacking a zipped series safely.

A path given to ``ctcovid predict`` is one scan (a DICOM series folder, a NIfTI file, a folder of
slice images, a ``.npy``/``.npz`` array, a ``.zip`` of one series) or a folder of many scans,
possibly nested (``<label>/<patient>/<scan>/``): :func:`find_scans` tells them apart. A folder is
*one* scan when it directly holds DICOM files or slice images; otherwise each scan file and scan
folder below it is a scan.

Zip archives come from people and, through the HTTP API, from anybody, so
:func:`extract_zip_safely` trusts nothing in them: entry names are checked (no absolute paths,
no ``..``, no drive letters, no symlinks or special files) but never used as file names (entries
are written under server-made names that keep only their natural order and a whitelisted
suffix), and the number of entries and the bytes actually written are bounded while extracting
(a zip bomb stops at the limit, whatever its headers claim).
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ctcovid.errors import ScanReadError
from ctcovid.io import (
    IMAGE_SUFFIXES,
    ITK_SUFFIXES,
    is_dicom_file,
    is_itk_path,
    is_nifti_path,
    load_volume,
    natural_key,
)
from ctcovid.types import Volume

_ARRAY_SUFFIXES = (".npy", ".npz")
# Files that sit beside scans in dataset folders and are never scan data.
_NOT_SCANS = frozenset(
    {".raw", ".zraw", ".csv", ".json", ".txt", ".md", ".xml", ".pdf", ".html", ".log", ".toml", ".yaml"}
)
# Suffixes an extracted entry may keep (the reader dispatches on them); anything else gets none.
_KEEP_SUFFIXES = frozenset({".dcm", ".dicom", ".ima", *IMAGE_SUFFIXES})
_MAX_DEPTH = 8  # how deep find_scans looks below a folder of scans
_DICOM_PROBES = 16  # files probed by content before a folder is declared "not a DICOM folder"
_COPY_CHUNK = 1 << 20


class UnsafeArchiveError(ScanReadError):
    """A zip that is refused: unsafe entry names, links, too many entries, or too large unpacked."""


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on what one zip may unpack to (the HTTP API passes its own, tighter ones)."""

    max_entries: int = 10_000
    max_total_bytes: int = 4 << 30  # 4 GiB: a 1,000-slice 512x512 16-bit series is ~0.5 GiB


def is_zip_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".zip"


def _is_scan_file(p: Path) -> bool:
    return is_nifti_path(p) or is_itk_path(p) or p.suffix.lower() in _ARRAY_SUFFIXES or is_zip_path(p)


def is_scan_folder(folder: Path) -> bool:
    """True when ``folder`` directly holds slice images or DICOM files (so it is one scan)."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files):
        return True
    candidates = [f for f in files if not _is_scan_file(f) and f.suffix.lower() not in _NOT_SCANS]
    return any(is_dicom_file(f) for f in candidates[:_DICOM_PROBES])


def find_scans(path: str | Path) -> list[tuple[str, Path]]:
    """``(scan_id, path)`` of every scan at or below ``path``, in natural order.

    The scan id is the path relative to ``path`` with ``/`` separators (a file's suffix dropped),
    or the name of ``path`` itself when it is one scan.

    Raises:
        ScanReadError: ``path`` does not exist, or is a folder with no scan in it.
    """
    root = Path(path)
    if not root.exists():
        raise ScanReadError(root, "no such file or folder", "check the path")
    if root.is_file() or is_scan_folder(root):
        return [(scan_id_of(root), root)]
    found: list[tuple[str, Path]] = []
    _walk(root, root, 0, found)
    ids = [sid for sid, _ in found]
    # "a/scan" (a folder) and "a/scan.zip" would share an id: keep the suffix where they clash.
    found = [(p.relative_to(root).as_posix() if ids.count(sid) > 1 else sid, p) for sid, p in found]
    if not found:
        # Let the reader explain what is wrong with this folder (empty, only CSVs, ...).
        load_volume(root)
        raise ScanReadError(root, "no scan found in the folder")  # pragma: no cover - load_volume raised
    return found


def _walk(root: Path, folder: Path, depth: int, found: list[tuple[str, Path]]) -> None:
    entries = sorted(
        (e for e in folder.iterdir() if not e.name.startswith(".")), key=lambda e: natural_key(e.name)
    )
    for e in entries:
        rel = e.relative_to(root).as_posix()
        if e.is_file() and _is_scan_file(e):
            found.append((_strip_suffix(rel), e))
        elif e.is_dir() and not e.is_symlink():
            if is_scan_folder(e):
                found.append((rel, e))
            elif depth < _MAX_DEPTH:
                _walk(root, e, depth + 1, found)


def _strip_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".npy", ".npz", ".zip", *ITK_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def scan_id_of(path: Path) -> str:
    return _strip_suffix(path.name) or "scan"


# --------------------------------------------------------------------------- zip
_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_entry(info: zipfile.ZipInfo, archive: Path) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\x00" in name:
        raise UnsafeArchiveError(
            archive, f"unsafe zip entry {name!r} (absolute path or '..')", "zip the series folder itself"
        )
    # The high 16 bits hold a Unix mode when the archive was made on Unix; the file type bits may
    # be absent (Python's writestr), which means a regular file.
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "symbolic link" if stat.S_ISLNK(mode) else "special file"
        raise UnsafeArchiveError(archive, f"zip entry {name!r} is a {kind}", "zip regular files only")
    if info.flag_bits & 0x1:
        raise UnsafeArchiveError(archive, f"zip entry {name!r} is encrypted", "zip without a password")


def extract_zip_safely(archive: str | Path, dest: str | Path, limits: ZipLimits | None = None) -> Path:
    """Unpack the scan files of ``archive`` into the empty folder ``dest``; return the scan folder.

    Entries are written as ``dest/<group>/<rank><suffix>``: ``group`` numbers the archive's folders,
    ``rank`` follows the natural order of the entry names (slice images stay in order) and only
    known scan suffixes are kept. DICOM files of several folders are pooled into one folder (the
    DICOM reader separates series by UID); slice images must all sit in one folder.

    Raises:
        UnsafeArchiveError: a refused entry, or the limits exceeded (checked before and while
            writing: a lying header cannot get past ``max_total_bytes``).
        ScanReadError: the file is not a zip, is corrupt, or holds no files.
    """
    limits = limits or ZipLimits()
    src, out = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ScanReadError(
            src, f"not a readable zip archive ({e})", "upload a .zip of one DICOM series"
        ) from e
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchiveError(
                src, f"zip holds {len(infos)} entries, more than the limit of {limits.max_entries}"
            )
        for info in infos:
            _check_entry(info, src)
        files = [
            i
            for i in infos
            if not i.is_dir() and not PurePosixPath(i.filename).name.startswith((".", "__MACOSX"))
            and "__MACOSX" not in PurePosixPath(i.filename).parts
        ]  # fmt: skip
        declared = sum(i.file_size for i in files)
        if declared > limits.max_total_bytes:
            raise UnsafeArchiveError(
                src, f"zip would unpack to {declared} bytes, more than the limit of {limits.max_total_bytes}"
            )
        if not files:
            raise ScanReadError(src, "the zip archive holds no files", "zip the files of one series")
        files.sort(key=lambda i: natural_key(i.filename))
        images = [i for i in files if PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES]
        image_dirs = {PurePosixPath(i.filename).parent for i in images}
        if len(image_dirs) > 1:
            raise ScanReadError(
                src, f"the zip holds slice images in {len(image_dirs)} folders", "zip one scan at a time"
            )
        # Images only, when there are any: a thumbnail or report beside them is not a slice.
        chosen = images or files
        folder = out / "scan"
        folder.mkdir(parents=True)
        budget = limits.max_total_bytes
        for rank, info in enumerate(chosen):
            suffix = PurePosixPath(info.filename).suffix.lower()
            target = folder / f"{rank:06d}{suffix if suffix in _KEEP_SUFFIXES else ''}"
            budget = _copy_bounded(zf, info, target, budget, src, limits)
    return folder


def _copy_bounded(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, src: Path, limits: ZipLimits
) -> int:
    try:
        with zf.open(info) as fin, target.open("xb") as fout:
            while chunk := fin.read(_COPY_CHUNK):
                budget -= len(chunk)
                if budget < 0:
                    raise UnsafeArchiveError(
                        src, f"zip unpacks to more than the limit of {limits.max_total_bytes} bytes"
                    )
                fout.write(chunk)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        ValueError,
        NotImplementedError,
    ) as e:
        raise ScanReadError(src, f"zip entry {info.filename!r} is corrupt ({e})") from e
    except (OSError, RuntimeError) as e:
        raise ScanReadError(src, f"zip entry {info.filename!r} cannot be unpacked ({e})") from e
    return budget


@contextmanager
def open_scan(
    path: str | Path, *, tmp_dir: str | Path | None = None, zip_limits: ZipLimits | None = None
) -> Iterator[Volume]:
    """Read the scan at ``path``; a ``.zip`` is unpacked into a private temp folder removed on exit."""
    p = Path(path)
    if not (p.is_file() and is_zip_path(p)):
        yield load_volume(p)
        return
    work = Path(tempfile.mkdtemp(prefix="ctcovid-zip-", dir=tmp_dir))
    try:
        folder = extract_zip_safely(p, work, zip_limits)
        try:
            volume = load_volume(folder)
        except ScanReadError as e:
            # The message would name our temp folder; name the archive the person gave instead.
            raise ScanReadError(p, e.reason, e.hint) from e
        yield volume
    finally:
        shutil.rmtree(work, ignore_errors=True)
