from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctcovid.data.dataset import ScanDataset
from ctcovid.data.manifest import ManifestRow, read_manifest
from ctcovid.errors import ManifestError
from ctcovid.preprocess.pipeline import PreprocessConfig, build_pipeline
from tiny_cohort import make_cohort


def test_scan_dataset_yields_tensor_target_and_meta(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path, n_per_class=1)
    rows = read_manifest(manifest)
    pipe = build_pipeline(PreprocessConfig(depth=6, size_hw=(16, 16), body_crop=False))
    ds = ScanDataset(rows, tmp_path, ["NCP", "CP", "Normal"], pipe)
    x, y, meta = ds[1]
    assert x.shape == (1, 6, 16, 16) and x.dtype == torch.float32
    assert y == 1 and meta == {"scan_id": "CP_0", "patient_id": "p_CP_0", "index": 1}
    assert [ds.target(i) for i in range(len(ds))] == [0, 1, 2]


def test_scan_dataset_rejects_labels_the_model_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"labels \['flu'\] are not among"):
        ScanDataset([ManifestRow("a", "a", "a.npy", "flu")], tmp_path, ["NCP"], lambda v: np.zeros(1))
