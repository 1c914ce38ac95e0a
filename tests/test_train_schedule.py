"""LR schedule values and the deterministic, rank-independent data order."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tunekit.train.plan import DataOrder, LRSchedule, total_steps


def test_schedule_warmup_cosine_hold():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=4, constant_steps=2, total_steps=20)
    assert [s.lr_at(i) for i in (1, 2, 4)] == [0.25, 0.5, 1.0]
    # cosine over steps 4..18 (decay ends at 20 - 2): the midpoint, step 11, is halfway in lr
    assert s.lr_at(11) == pytest.approx(0.55)
    assert s.lr_at(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 14)))
    assert s.lr_at(18) == pytest.approx(0.1)
    lrs = [s.lr_at(i) for i in range(4, 19)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert [s.lr_at(i) for i in (19, 20)] == [0.1, 0.1]


def test_schedule_without_warmup_or_hold():
    s = LRSchedule(lr=2.0, min_lr=0.0, warmup_steps=0, constant_steps=0, total_steps=10)
    assert s.lr_at(10) == pytest.approx(0.0) and s.lr_at(5) == pytest.approx(1.0)


def test_data_order_is_a_function_of_seed_and_step():
    a, b = DataOrder(10, 4, seed=7), DataOrder(10, 4, seed=7)
    assert np.array_equal(a.global_batch_indices(3), b.global_batch_indices(3))
    # steps 1..5 cover 20 positions = epochs 0 and 1, each a permutation of all 10 items
    stream = np.concatenate([a.global_batch_indices(s) for s in range(1, 6)])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # a new permutation per epoch
    assert not np.array_equal(a.global_batch_indices(1), DataOrder(10, 4, seed=8).global_batch_indices(1))


def test_ranks_split_the_same_global_batch():
    order = DataOrder(50, 8, seed=1)
    whole = order.global_batch_indices(4)
    one = np.concatenate(order.rank_micro_batches(4, 0, 1, 2))
    two = np.concatenate(order.rank_micro_batches(4, 0, 2, 2) + order.rank_micro_batches(4, 1, 2, 2))
    assert np.array_equal(one, whole) and np.array_equal(two, whole)
    assert [len(m) for m in order.rank_micro_batches(4, 1, 2, 2)] == [2, 2]


def test_total_steps():
    assert total_steps(100, 8, 2, -1) == 25
    assert total_steps(100, 8, 2, 7) == 7
