"""MedMNIST v2 3D datasets (``organmnist3d.npz`` etc.): ``{train,val,test}_{images,labels}``.

The official splits are kept in the manifest's ``split`` column. Volumes are addressed inside the
archive as ``<file>.npz#<split>:<index>``; labels are the class indices as strings. MedMNIST gives
no patient ids, so each volume is its own patient (the official split is patient-disjoint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctcovid.data.cohorts.base import ImportResult, Progress, register_importer
from ctcovid.data.manifest import SPLITS, ManifestRow
from ctcovid.errors import ManifestError


@register_importer("medmnist")
def import_medmnist(root: str | Path, *, progress: Progress | None = None) -> ImportResult:
    path = Path(root)
    if not path.is_file():
        raise ManifestError(f"MedMNIST archive '{path}' does not exist (pass the .npz file)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ManifestError(f"MedMNIST archive '{path}' is not a readable .npz: {e}") from e
    with npz:
        present = [s for s in SPLITS if f"{s}_images" in npz.files]
        if not present:
            raise ManifestError(
                f"'{path}' has none of {', '.join(f'{s}_images' for s in SPLITS)}; keys: {', '.join(npz.files)}"
            )
        result = ImportResult(kind="medmnist", root=str(path.parent))
        for split in present:
            images, labels = npz[f"{split}_images"], npz.get(f"{split}_labels")
            if labels is None or len(labels) != len(images):
                raise ManifestError(f"'{path}': {split}_labels missing or not as long as {split}_images")
            for i in range(len(images)):
                if images[i].ndim != 3:
                    result.skipped.append(
                        (f"{path.name}#{split}:{i}", f"not a 3D volume (shape {images[i].shape})")
                    )
                    continue
                result.rows.append(
                    ManifestRow(
                        scan_id=f"{split}-{i}",
                        patient_id=f"{split}-{i}",
                        path=f"{path.name}#{split}:{i}",
                        label=str(int(np.ravel(labels[i])[0])),
                        format="numpy",
                        source="medmnist",
                        n_slices=int(images[i].shape[0]),
                        split=split,
                    )
                )
            if progress:
                progress(present.index(split) + 1, len(present))
    return result


def load_medmnist_volume(path: Path, address: str) -> np.ndarray:
    """The volume at ``<split>:<index>`` inside a MedMNIST archive, as float32."""
    split, _, idx = address.partition(":")
    with np.load(path, allow_pickle=False) as npz:
        return np.asarray(npz[f"{split}_images"][int(idx)], dtype=np.float32)
