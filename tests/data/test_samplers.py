from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctcovid.data.samplers import ClassUniformBatchSampler, ShuffleBatchSampler, class_weights

TARGETS = [0] * 30 + [1] * 6 + [2] * 3


def test_every_batch_is_class_uniform() -> None:
    s = ClassUniformBatchSampler(TARGETS, batch_size=6, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 15  # 30 items of the largest class, 2 per batch
    for b in batches:
        assert Counter(TARGETS[i] for i in b) == {0: 2, 1: 2, 2: 2}


def test_largest_class_seen_once_and_small_classes_oversampled_evenly() -> None:
    batches = list(ClassUniformBatchSampler(TARGETS, batch_size=6, seed=1))
    seen = Counter(i for b in batches for i in b)
    assert all(seen[i] == 1 for i in range(30))
    assert all(seen[i] == 5 for i in range(30, 36))  # 30 draws over 6 items
    assert all(seen[i] == 10 for i in range(36, 39))  # 30 draws over 3 items


def test_remainder_rotates_between_classes() -> None:
    batches = list(ClassUniformBatchSampler(TARGETS, batch_size=4, seed=0))
    totals = Counter(TARGETS[i] for b in batches for i in b)
    assert all(len(b) == 4 for b in batches)
    assert max(totals.values()) - min(totals.values()) <= len(batches) // 3 + 1


def test_epochs_differ_and_are_reproducible() -> None:
    s = ClassUniformBatchSampler(TARGETS, batch_size=6, seed=0)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    s.set_epoch(0)
    assert a != b and a == list(s)


def test_ddp_ranks_get_disjoint_shares_of_one_sequence() -> None:
    single = list(ClassUniformBatchSampler(TARGETS, batch_size=6, seed=3))
    ranks = [
        list(ClassUniformBatchSampler(TARGETS, batch_size=6, seed=3, rank=r, world_size=3)) for r in range(3)
    ]
    assert len({len(r) for r in ranks}) == 1
    assert [b for i in range(len(ranks[0])) for b in (r[i] for r in ranks)][: len(single)] == single
    for r in ranks:
        for b in r:
            assert Counter(TARGETS[i] for i in b) == {0: 2, 1: 2, 2: 2}


def test_batch_smaller_than_classes_is_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size 2 is smaller than the number of classes present"):
        ClassUniformBatchSampler(TARGETS, batch_size=2)


def test_missing_class_is_skipped_not_crashing() -> None:
    s = ClassUniformBatchSampler([0, 0, 2, 2], batch_size=2, num_classes=3)
    assert all(sorted(TARGETS_ for TARGETS_ in (([0, 0, 2, 2])[i] for i in b)) == [0, 2] for b in s)


def test_shuffle_sampler_ddp_covers_everything_once() -> None:
    ranks = [list(ShuffleBatchSampler(10, 3, seed=0, rank=r, world_size=2)) for r in range(2)]
    items = [i for r in ranks for b in r for i in b]
    assert sorted(set(items)) == list(range(10)) and len(items) == 10


def test_class_weights_inverse_frequency() -> None:
    w = class_weights([0, 0, 0, 1], 3)
    np.testing.assert_allclose(w, [4 / 3 / 2, 4 / 1 / 2, 0.0])


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), batch=st.integers(1, 8), world=st.integers(1, 6), epoch=st.integers(0, 3))
def test_shuffle_sampler_gives_every_rank_the_same_number_of_non_empty_batches(
    n: int, batch: int, world: int, epoch: int
) -> None:
    """Regression (issue 18.6): n=1 on 4 ranks gave ranks 2 and 3 an empty batch."""
    ranks = []
    for r in range(world):
        s = ShuffleBatchSampler(n, batch, seed=0, rank=r, world_size=world)
        s.set_epoch(epoch)
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s)
    assert len({len(r) for r in ranks}) == 1
    assert all(len(b) >= 1 for r in ranks for b in r)
    items = [i for r in ranks for b in r for i in b]
    assert set(items) == set(range(n))  # everything seen; padding repeats items like DistributedSampler
    assert len(items) == math.ceil(n / world) * world


def test_one_item_on_four_ranks_is_repeated_not_empty() -> None:
    assert [list(ShuffleBatchSampler(1, 2, rank=r, world_size=4)) for r in range(4)] == [[[0]]] * 4


@pytest.mark.parametrize("world", [1, 3])
def test_draw_positions_are_unique_in_an_epoch_and_follow_the_indices(world: int) -> None:
    samplers = [
        lambda r, p: ClassUniformBatchSampler(TARGETS, 6, seed=2, rank=r, world_size=world, positions=p),
        lambda r, p: ShuffleBatchSampler(len(TARGETS), 4, seed=2, rank=r, world_size=world, positions=p),
    ]
    for make in samplers:
        positions = []
        for r in range(world):
            plain, tagged = list(make(r, False)), list(make(r, True))
            assert [[i for i, _ in b] for b in tagged] == plain  # same draws, now numbered
            positions += [p for b in tagged for _, p in b]
        assert len(set(positions)) == len(positions), "a position names one draw of the epoch"
