from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctcovid.data.cache import PreprocessCache
from ctcovid.data.dataset import CachedDataset, ScanDataset
from ctcovid.data.manifest import ManifestRow, read_manifest
from ctcovid.data.samplers import ClassUniformBatchSampler
from ctcovid.errors import ManifestError
from ctcovid.preprocess.augment import AugmentConfig, build_augment
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


def _cached(tmp_path: Path, n_per_class: dict[str, int], augment: bool, **pre: object) -> CachedDataset:
    manifest = make_cohort(tmp_path, n_per_class=max(n_per_class.values()))
    keep = {f"{lab}_{i}" for lab, n in n_per_class.items() for i in range(n)}
    rows = [r for r in read_manifest(manifest) if r.scan_id in keep]
    cfg = PreprocessConfig(**{"depth": 6, "size_hw": (16, 16), "body_crop": False, **pre})  # type: ignore[arg-type]
    cache = PreprocessCache(tmp_path / "cache", cfg, tmp_path)
    cache.build(rows, workers=1)
    aug = build_augment(AugmentConfig()) if augment else None
    return CachedDataset(rows, cache, ["NCP", "CP", "Normal"], augment=aug, seed=5)


def test_each_draw_of_an_oversampled_scan_gets_its_own_augmentation(tmp_path: Path) -> None:
    """Regression (issue 18.4): 10 draws of a minority scan were 10 identical arrays."""
    ds = _cached(tmp_path, {"NCP": 8, "CP": 1}, augment=True)
    ds.set_epoch(3)
    sampler = ClassUniformBatchSampler(ds.targets, 2, num_classes=3, seed=0, positions=True)
    sampler.set_epoch(3)
    minority = ds.targets.index(1)
    draws = [key for batch in sampler for key in batch if key[0] == minority]
    assert len(draws) == 8  # the single CP scan fills half of each of the 8 batches
    arrays = [ds[key][0].numpy() for key in draws]
    for a in range(len(arrays)):
        for b in range(a + 1, len(arrays)):
            assert not np.array_equal(arrays[a], arrays[b]), (draws[a], draws[b])
    # Still a function of (seed, epoch, position): the same draw gives the same array again, in a
    # fresh dataset object too (a resume or another worker).
    again = _cached(tmp_path / "again", {"NCP": 8, "CP": 1}, augment=True)
    again.set_epoch(3)
    np.testing.assert_array_equal(again[draws[2]][0].numpy(), arrays[2])
    # Without augmentation every draw is the cached scan itself.
    plain = _cached(tmp_path / "plain", {"NCP": 8, "CP": 1}, augment=False)
    np.testing.assert_array_equal(plain[draws[0]][0].numpy(), plain[draws[1]][0].numpy())


def test_short_scans_dropped_by_the_chunk_policy_are_listed_as_excluded(tmp_path: Path) -> None:
    ds = _cached(
        tmp_path, {"NCP": 1, "CP": 1}, augment=False, depth_mode="stack", chunk_depth=12, chunk_short="drop"
    )
    assert len(ds) == 0
    assert [e[0] for e in ds.excluded] == ["NCP_0", "CP_0"]
    assert "10 slices after preprocessing, fewer than chunk_depth=12" in ds.excluded[0][3]
