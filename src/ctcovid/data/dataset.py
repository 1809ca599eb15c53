"""Torch datasets over manifest rows.

:class:`ScanDataset` yields ``(tensor, target, meta)`` per scan: the scan is read with
:func:`load_row_volume` and turned into a ``(C, D, H, W)`` float32 array by the preprocessing
callable it is given (the pipeline of ``ctcovid.preprocess``), so the same rows can feed training,
evaluation and prediction with the same preprocessing. ``meta`` carries ``scan_id``, ``patient_id``
and the row index so predictions can be aggregated per scan and per patient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ctcovid.data.manifest import ManifestRow
from ctcovid.errors import ManifestError
from ctcovid.types import ScanFormat, ScanSource, Units, Volume

Transform = Callable[[Volume], np.ndarray]


def load_row_volume(row: ManifestRow, root: str | Path) -> Volume:
    """Read the scan of a manifest row (paths relative to ``root``; ``file.npz#split:i`` addressing)."""
    from ctcovid.io import load_volume

    if "#" in row.path:
        from ctcovid.data.cohorts.medmnist import load_medmnist_volume

        file_part, _, address = row.path.partition("#")
        path = row.resolve(root)
        try:
            voxels = load_medmnist_volume(path, address)
        except (OSError, KeyError, ValueError, IndexError) as e:
            raise ManifestError(f"scan {row.scan_id!r}: cannot read {file_part}#{address}: {e}") from e
        if voxels.size and voxels.max() <= 1.0:
            voxels = voxels * 255.0  # some MedMNIST archives store 0..1 floats; the pipeline expects 0..255
        source = ScanSource(
            format=ScanFormat.NUMPY, path=row.path, patient_id=row.patient_id, n_slices=voxels.shape[0]
        )
        # MedMNIST stores 0..255 (uint8) or 0..1 (float) intensities, never HU.
        return Volume(voxels, units=Units.DISPLAY, source=source, spacing_known=False)
    return load_volume(row.resolve(root))


class ScanDataset(Dataset[tuple[torch.Tensor, int, dict[str, Any]]]):
    """One item per manifest row: ``(float32 tensor (C, D, H, W), class index, meta)``."""

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        root: str | Path,
        label_names: Sequence[str],
        transform: Transform,
    ) -> None:
        unknown = sorted({r.label for r in rows} - set(label_names))
        if unknown:
            raise ManifestError(f"labels {unknown} are not among the model's labels {list(label_names)}")
        self.rows = list(rows)
        self.root = Path(root)
        self.label_names = tuple(label_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def target(self, index: int) -> int:
        """Class index of item ``index`` without reading the scan (used by samplers)."""
        return self.label_names.index(self.rows[index].label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, Any]]:
        row = self.rows[index]
        array = self.transform(load_row_volume(row, self.root))
        meta = {"scan_id": row.scan_id, "patient_id": row.patient_id, "index": index}
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), self.target(index), meta


class CachedDataset(Dataset[tuple[torch.Tensor, int, dict[str, Any]]]):
    """Training/evaluation samples from a :class:`~ctcovid.data.cache.PreprocessCache`.

    In ``stack`` depth mode every chunk of ``chunk_depth`` slices is a sample labelled with its
    scan's label (the diagnosis paper); otherwise every scan is one sample. ``meta`` holds
    ``scan_id``, ``patient_id``, the chunk index and slice range, so predictions can be grouped.
    With ``augment`` set (training), a draw is augmented with the generator seeded by
    ``(seed, epoch, position)``: the same on every run, every worker count and after a resume.
    ``position`` numbers the draws of the epoch: the samplers of :mod:`ctcovid.data.samplers`
    with ``positions=True`` pass ``(index, position)`` pairs, so an item drawn several times in
    an epoch (class-uniform oversampling) is augmented differently each time. A plain index is
    its own position (each item drawn once).

    Scans that give no sample (shorter than ``chunk_depth`` with ``chunk_short="drop"``) are
    listed in :attr:`excluded` as ``(scan_id, patient_id, label, reason)``, never left out silently.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        cache: Any,  # PreprocessCache (not imported: cache imports this module)
        label_names: Sequence[str],
        *,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        from ctcovid.preprocess.depth import chunk_ranges

        unknown = sorted({r.label for r in rows} - set(label_names))
        if unknown:
            raise ManifestError(f"labels {unknown} are not among the model's labels {list(label_names)}")
        self.rows, self.cache, self.label_names = list(rows), cache, tuple(label_names)
        self.augment, self.seed, self.epoch = augment, seed, 0
        cfg = cache.cfg
        self.items: list[tuple[int, int, int, int]] = []  # (row, chunk index, start, stop)
        self.excluded: list[tuple[str, str, str, str]] = []
        self.metas: list[dict[str, Any]] = []  # checked once here; samples open entries without re-checking
        for i, row in enumerate(self.rows):
            meta = cache.meta(row)
            if meta is None:
                raise ManifestError(f"scan {row.scan_id!r} is not in the cache {cache.dir}; build it first")
            self.metas.append(meta)
            depth = meta["shape"][1]
            if cfg.depth_mode == "stack":
                ranges = chunk_ranges(
                    depth, cfg.chunk_depth, cfg.chunk_stride, cfg.chunk_last, cfg.chunk_short
                )
            else:
                ranges = [(0, depth)]
            if not ranges:
                reason = (
                    f"{depth} slices after preprocessing, fewer than chunk_depth={cfg.chunk_depth} "
                    "(chunk_short='drop')"
                )
                self.excluded.append((row.scan_id, row.patient_id, row.label, reason))
            self.items += [(i, k, a, b) for k, (a, b) in enumerate(ranges)]
        self.chunk_depth = cfg.chunk_depth if cfg.depth_mode == "stack" else None
        self.targets = [self.label_names.index(self.rows[i].label) for i, *_ in self.items]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, dict[str, Any]]:
        index, position = key if isinstance(key, tuple) else (key, key)
        r, k, start, stop = self.items[index]
        row = self.rows[r]
        array = self.cache.open(row, self.metas[r]).read(start, stop)  # only these slices; a fresh array
        if self.chunk_depth is not None and stop - start < self.chunk_depth:
            pad = np.repeat(array[:, -1:], self.chunk_depth - (stop - start), axis=1)  # edge replication
            array = np.concatenate([array, pad], axis=1)
        if self.augment is not None:
            array = self.augment(array, np.random.default_rng([self.seed, self.epoch, position]))
        meta = {
            "scan_id": row.scan_id,
            "patient_id": row.patient_id,
            "chunk": k,
            "start": start,
            "stop": stop,
        }
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), self.targets[index], meta
