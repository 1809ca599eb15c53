"""A tiny three-class cohort of .npy HU volumes and a config that trains on it in seconds (shared by tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctcovid.data.manifest import ManifestRow, write_manifest

LABELS = ("NCP", "CP", "Normal")


def make_cohort(root: Path, n_per_class: int = 8, shape: tuple[int, int, int] = (10, 24, 24)) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    _, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = ((yy - shape[1] / 2) / (shape[1] * 0.42)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
    lungs = (
        body
        & (np.abs(xx - shape[2] / 2) > 2)
        & (
            ((yy - shape[1] / 2) / (shape[1] * 0.3)) ** 2
            + ((np.abs(xx - shape[2] / 2) - shape[2] * 0.2) / (shape[2] * 0.15)) ** 2
            < 1
        )
    )
    for label in LABELS:
        for i in range(n_per_class):
            vol = np.where(body, 40.0, -1000.0)
            vol[lungs] = -850.0
            if label == "NCP":  # bilateral ground glass
                vol[lungs & (rng.random(shape) < 0.5)] = -500.0
            elif label == "CP":  # one dense lung
                vol[lungs & (xx < shape[2] / 2)] = 20.0
            vol += rng.normal(0, 15, shape)
            path = root / f"{label}_{i}.npy"
            np.save(path, vol.astype(np.float32))
            rows.append(
                ManifestRow(
                    f"{label}_{i}", f"p_{label}_{i}", path.name, label, format="numpy", n_slices=shape[0]
                )
            )
    return write_manifest(rows, root / "manifest.csv")


TINY_CONFIG = """
[data]
manifest = "{manifest}"
task = "diagnosis"
val = 0.25
test = 0.0
workers = 1

[preprocess]
depth_mode = "uniformize"
depth = 8
size_hw = [24, 24]
body_crop = false

[model]
name = "r3d_10"

[train]
epochs = {epochs}
batch_size = 6
lr = 1e-3
sampler = "class_uniform"
deterministic = true
threads = 1
best_metric = "val_accuracy"
"""
