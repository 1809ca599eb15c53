"""Preprocessing (L1): CT volumes to model-ready ``(C, D, H, W)`` float32 arrays.

One pipeline, defined once by a :class:`PreprocessConfig` that travels with every checkpoint, is
used unchanged for training, evaluation, prediction and serving::

    pipeline = build_pipeline(PreprocessConfig())
    array = pipeline(volume)                      # (1, 40, 256, 256) in [0, 1]
    samples = pipeline.chunks(array, scan_id)     # [Chunk], one per network input
    augment = build_augment(pipeline.config.augment)  # training only: augment(array, rng)

The steps live in one module each: :mod:`.intensity` (HU windows), :mod:`.body` (crop and table
removal), :mod:`.spatial` (in-plane resize), :mod:`.depth` (uniformization and depth-n chunks),
:mod:`.augment`.
"""

from ctcovid.preprocess.augment import Augment, AugmentConfig, build_augment
from ctcovid.preprocess.body import BodyCrop, BodyMask, crop_body, find_body
from ctcovid.preprocess.depth import Chunk, chunk_ranges, stack_chunks, uniformize_depth, zoom_matrix
from ctcovid.preprocess.intensity import (
    LUNG_WINDOW_HU,
    MEDIASTINAL_WINDOW_HU,
    apply_window,
    display_to_unit,
    to_channels,
)
from ctcovid.preprocess.pipeline import Pipeline, PreprocessConfig, Preprocessed, build_pipeline
from ctcovid.preprocess.spatial import CropBox, resize_inplane

__all__ = [
    "LUNG_WINDOW_HU",
    "MEDIASTINAL_WINDOW_HU",
    "Augment",
    "AugmentConfig",
    "BodyCrop",
    "BodyMask",
    "Chunk",
    "CropBox",
    "Pipeline",
    "PreprocessConfig",
    "Preprocessed",
    "apply_window",
    "build_augment",
    "build_pipeline",
    "chunk_ranges",
    "crop_body",
    "display_to_unit",
    "find_body",
    "resize_inplane",
    "stack_chunks",
    "to_channels",
    "uniformize_depth",
    "zoom_matrix",
]
