"""Batch samplers, including the class-uniform sampler of COVID-Net CT-S.

The severity paper draws "a uniform number of samples from each severity level ... to construct a
batch for each training iteration" because the classes are highly imbalanced.
:class:`ClassUniformBatchSampler` does that: every batch holds ``batch_size // num_classes``
items of each class (the remainder goes to classes in turn, rotating per batch). An epoch has as
many batches as needed to show every item of the largest class once; smaller classes are
oversampled by cycling through fresh permutations, so an item repeats within an epoch only when
its class is smaller than the largest one.

Under DistributedDataParallel each rank gets every ``world_size``-th batch of the same global
sequence (seeded by ``seed + epoch``), so ranks see disjoint batches and together the same epoch
one process would see. Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.

With ``positions=True`` a batch is a list of ``(index, position)`` pairs instead of indices:
``position`` numbers the draws of the epoch's global sequence (unique across ranks), so a dataset
can augment each draw of an item differently (an oversampled minority scan drawn ten times gets
ten augmentations, not ten copies of one) while staying a function of ``(seed, epoch, position)``,
which a resume replays exactly. :class:`~ctcovid.data.dataset.CachedDataset` takes either form.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class ClassUniformBatchSampler(Sampler[list[Any]]):
    """Yields lists of dataset indices with the same number of items from each class."""

    def __init__(
        self,
        targets: Sequence[int],
        batch_size: int,
        *,
        num_classes: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        positions: bool = False,
    ) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        k = int(num_classes if num_classes is not None else self.targets.max() + 1)
        self.by_class = [np.flatnonzero(self.targets == c) for c in range(k)]
        self.present = [c for c in range(k) if len(self.by_class[c])]
        if not self.present:
            raise ValueError("ClassUniformBatchSampler needs at least one item")
        if batch_size < len(self.present):
            raise ValueError(
                f"batch_size {batch_size} is smaller than the number of classes present ({len(self.present)}); "
                "a class-uniform batch needs at least one item per class"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.positions = positions
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> int:
        per_class = self.batch_size // len(self.present)
        largest = max(len(self.by_class[c]) for c in self.present)
        return max(1, math.ceil(largest / max(per_class, 1)))

    def __len__(self) -> int:
        return (
            math.ceil(self._global_batches() / self.world_size)
            if self.world_size > 1
            else self._global_batches()
        )

    def __iter__(self) -> Iterator[list[Any]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        # The global sequence is padded so every rank gets the same number of batches (DDP needs it).
        n_total = len(self) * self.world_size
        streams = {c: _Cycler(self.by_class[c], rng) for c in self.present}
        base, extra = divmod(self.batch_size, len(self.present))
        for b in range(n_total):
            counts = {
                c: base + (1 if (i - b) % len(self.present) < extra else 0)
                for i, c in enumerate(self.present)
            }
            batch = [int(j) for c in self.present for j in streams[c].take(counts[c])]
            order = rng.permutation(len(batch))
            if b % self.world_size == self.rank:
                items = [batch[i] for i in order]
                yield _tag(items, b * self.batch_size) if self.positions else items


class _Cycler:
    """Endless stream over a class's indices: one fresh permutation after another."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices, self.rng = indices, rng
        self.buf: list[int] = []

    def take(self, n: int) -> list[int]:
        while len(self.buf) < n:
            self.buf.extend(self.indices[self.rng.permutation(len(self.indices))].tolist())
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _tag(items: list[int], first: int, step: int = 1) -> list[tuple[int, int]]:
    return [(index, first + k * step) for k, index in enumerate(items)]


class ShuffleBatchSampler(Sampler[list[Any]]):
    """Plain shuffled batches with the same epoch seeding and DDP sharding as the uniform sampler.

    Under DDP the epoch is padded like ``DistributedSampler`` pads it (indices repeated from the
    start of the permutation, cyclically when there are fewer items than ranks), so every rank
    gets the same number of non-empty batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        positions: bool = False,
    ) -> None:
        if n < 1:
            raise ValueError("ShuffleBatchSampler needs at least one item")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.positions = positions
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_rank = math.ceil(self.n / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[Any]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        per_rank = math.ceil(self.n / self.world_size)
        # Like DistributedSampler: repeat from the start, cyclically (n=1 on 4 ranks: 4 copies).
        padded = np.resize(order, per_rank * self.world_size)
        mine = padded[self.rank :: self.world_size].tolist()
        for i in range(len(self)):
            items = mine[i * self.batch_size : (i + 1) * self.batch_size]
            if self.positions:  # global position of mine[k] in the padded sequence: k * world + rank
                yield _tag(items, i * self.batch_size * self.world_size + self.rank, self.world_size)
            else:
                yield items


def class_weights(targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Inverse-frequency weights (mean 1 over present classes) for weighted cross-entropy."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return w.astype(np.float32)
