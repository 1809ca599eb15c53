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
        source = ScanSource(format=ScanFormat.NUMPY, path=row.path, patient_id=row.patient_id,
                            n_slices=voxels.shape[0])
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
