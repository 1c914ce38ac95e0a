"""The official learning-rate schedule and the deterministic data order, both pure functions of the step.

Schedule (the official kit's NeMo `CosineAnnealing` with `constant_steps`, i.e. Megatron's
warmup + cosine + hold): linear warmup to `lr` over `warmup_steps`, cosine decay to `min_lr`
until `total - constant_steps`, then `min_lr` held for the last `constant_steps` steps. Steps
are counted from 1 (the first update uses lr * 1/warmup, not 0 as Megatron's step-0 formula would).

Data order: the training stream is epoch after epoch, each a permutation of the packed sequences
drawn from `seed + epoch`; step s uses stream positions [s*G, (s+1)*G). Because it depends only
on (seed, step), a resumed run sees exactly the batches the uninterrupted run would have seen,
whatever the number of processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LRSchedule:
    """Warmup -> cosine -> hold at min_lr over `total_steps` optimiser steps."""

    lr: float
    min_lr: float
    warmup_steps: int
    constant_steps: int
    total_steps: int

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step `step` (1-based)."""
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        decay_end = self.total_steps - self.constant_steps
        if step > decay_end:
            return self.min_lr
        span = decay_end - self.warmup_steps
        if span <= 0:
            return self.lr
        ratio = (step - self.warmup_steps) / span
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))

    def apply(self, optimizer, step: int) -> float:
        """Set every param group's lr for step `step`; returns it."""
        value = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> dict:
        """What a checkpoint records about the schedule (it is stateless beyond the step)."""
        return {"kind": "warmup_cosine_hold", "lr": self.lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "constant_steps": self.constant_steps,
                "total_steps": self.total_steps}


@dataclass(frozen=True)
class DataOrder:
    """Which dataset indices each step and rank trains on (deterministic from seed and step)."""

    n_items: int
    global_batch: int
    seed: int

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_items)

    def global_batch_indices(self, step: int) -> np.ndarray:
        """The G dataset indices of 1-based step `step`, in order."""
        start = (step - 1) * self.global_batch
        pos = np.arange(start, start + self.global_batch)
        epochs, offsets = np.divmod(pos, self.n_items)
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out

    def rank_micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[np.ndarray]:
        """This rank's contiguous share of the step's global batch, cut into micro-batches."""
        idx = self.global_batch_indices(step)
        per_rank = len(idx) // world
        mine = idx[rank * per_rank:(rank + 1) * per_rank]
        return [mine[i:i + micro] for i in range(0, len(mine), micro)]

    def epoch_at(self, step: int) -> float:
        """Fractional epochs completed after `step`."""
        return step * self.global_batch / self.n_items


def total_steps(n_items: int, global_batch: int, epochs: int, max_steps: int) -> int:
    """Optimiser steps of a run: max_steps when > 0, else whole global batches in `epochs` epochs."""
    if max_steps > 0:
        return max_steps
    return (epochs * n_items) // global_batch
