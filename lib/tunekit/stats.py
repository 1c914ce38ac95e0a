"""Uncertainty for accuracy on a fixed problem set: bootstrap intervals and paired tests.

With 90 problems one answer is 1.1 points, so a 2-point difference between two models is two
answers. These few formulas say how much of a difference the problems can resolve:

- `bootstrap_ci`: percentile bootstrap interval of one model's accuracy (resample the problems);
- `paired_bootstrap`: interval of the accuracy difference between two models on the SAME problems
  (resample problems, keep each problem's pair of verdicts together);
- `mcnemar_exact`: McNemar's exact test on the problems where exactly one model is right (a
  two-sided binomial test of the discordant pairs against 1/2; no normal approximation, which
  is poor for the handful of discordant pairs a small eval set gives).

Numbers are fixed by `seed`, so notebooks and their stored references are reproducible.
"""
from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np

DEFAULT_BOOT = 10000


def _as_array(correct: Sequence[bool]) -> np.ndarray:
    arr = np.asarray(list(correct), dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("need at least one verdict")
    return arr


def bootstrap_ci(correct: Sequence[bool], n_boot: int = DEFAULT_BOOT, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (`level`, e.g. 0.95) of the mean of 0/1 verdicts."""
    x = _as_array(correct)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_boot: int = DEFAULT_BOOT, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Accuracy difference a - b on the same problems: the difference, its interval, a two-sided p."""
    x, y = _as_array(a), _as_array(b)
    if x.size != y.size:
        raise ValueError(f"paired verdicts need the same problems ({x.size} vs {y.size})")
    d = x - y
    rng = np.random.default_rng(seed)
    diffs = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    # Two-sided: how often the resampled difference lands on the other side of zero (or on it).
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"diff": float(d.mean()), "low": float(lo), "high": float(hi), "p": p}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test: only_a (a right, b wrong), only_b, and the two-sided p-value."""
    x, y = _as_array(a).astype(bool), _as_array(b).astype(bool)
    if x.size != y.size:
        raise ValueError(f"paired verdicts need the same problems ({x.size} vs {y.size})")
    only_a, only_b = int(np.sum(x & ~y)), int(np.sum(~x & y))
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p": 1.0}
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return {"only_a": only_a, "only_b": only_b, "p": min(1.0, 2 * tail)}
