"""Evaluate a checkpoint on a manifest split, at chunk, scan and patient level.

The checkpoint's own preprocessing config rebuilds the pipeline, so evaluation sees exactly what
training saw. Chunk probabilities are averaged per scan, and scan probabilities per patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ctcovid.checkpoint import load_checkpoint, rebuild_model
from ctcovid.data.cache import PreprocessCache
from ctcovid.data.dataset import CachedDataset
from ctcovid.data.manifest import read_manifest
from ctcovid.data.splits import read_split, split_path
from ctcovid.errors import ManifestError
from ctcovid.metrics.metrics import aggregate_by, classification_metrics
from ctcovid.preprocess.pipeline import PreprocessConfig
from ctcovid.train.loop import StepOptions, evaluate


def confusion(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> list[list[int]]:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(targets, probs.argmax(1) if len(probs) else []):
        cm[t, p] += 1
    return cm.tolist()


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    *,
    split: str = "test",
    split_file: str | Path | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the ``split`` rows of ``manifest`` (``split='all'``: every row)."""
    ckpt = load_checkpoint(checkpoint)
    labels = list(ckpt["labels"])
    rows = read_manifest(manifest, labels=labels)
    if split != "all":
        assignment = read_split(split_file or split_path(manifest))
        rows = [r for r in rows if assignment.get(r.scan_id) == split]
    if not rows:
        raise ManifestError(f"no scans in split {split!r} of {manifest}")
    root = Path(manifest).parent
    cache = PreprocessCache(
        cache_dir or root / ".ctcovid_cache", PreprocessConfig.from_dict(ckpt["preprocess"]), root
    )
    cache.build(rows)
    ds = CachedDataset(rows, cache, labels)
    dev = torch.device(device)
    model = rebuild_model(ckpt).to(dev)
    loss, probs_t, targets_t, metas = evaluate(
        model, DataLoader(ds, batch_size=batch_size), nn.CrossEntropyLoss(), StepOptions(dev)
    )
    probs, targets = probs_t.numpy(), targets_t.numpy()
    k = len(labels)
    scan_p, scan_t, scan_ids = aggregate_by(probs, targets, [m["scan_id"] for m in metas])
    patient_of = {r.scan_id: r.patient_id for r in rows}
    pat_p, pat_t, _ = aggregate_by(scan_p, scan_t, [patient_of[s] for s in scan_ids])
    return {
        "checkpoint": ckpt["path"],
        "labels": labels,
        "split": split,
        "loss": loss,
        "chunk": classification_metrics(probs, targets, k),
        "scan": {**classification_metrics(scan_p, scan_t, k), "confusion": confusion(scan_p, scan_t, k)},
        "patient": classification_metrics(pat_p, pat_t, k),
        "scans": [
            {
                "scan_id": s,
                "label": labels[int(t)],
                "pred": labels[int(p.argmax())],
                "probs": [round(float(x), 4) for x in p],
            }
            for s, t, p in zip(scan_ids, scan_t, scan_p)
        ],
    }
