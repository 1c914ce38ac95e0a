"""tunekit.stats: bootstrap intervals and paired tests on 0/1 verdicts."""
from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from tunekit.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap


def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs():
    # 1 problem only a gets right, 9 only b: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 22/1024.
    a = [True] * 1 + [False] * 9 + [True] * 30 + [False] * 50
    b = [False] * 1 + [True] * 9 + [True] * 30 + [False] * 50
    out = mcnemar_exact(a, b)
    assert (out["only_a"], out["only_b"]) == (1, 9)
    assert out["p"] == pytest.approx(float(Fraction(2 * (comb(10, 0) + comb(10, 1)), 2 ** 10)))
    assert mcnemar_exact(b, a)["p"] == out["p"]  # symmetric
    assert mcnemar_exact(a, a)["p"] == 1.0  # no discordant problem: no evidence at all
    assert mcnemar_exact([True, False], [False, True])["p"] == 1.0  # capped at 1
    with pytest.raises(ValueError, match="same problems"):
        mcnemar_exact([True], [True, False])


def test_a_two_point_difference_on_90_problems_is_not_significant():
    rng = np.random.default_rng(1)
    base = rng.random(90) < 0.5
    better = base.copy()
    wrong = np.flatnonzero(~base)[:2]
    better[wrong] = True  # two more right answers: +2.2 points
    pb = paired_bootstrap(better, base, n_boot=4000)
    assert pb["diff"] == pytest.approx(2 / 90)
    assert pb["low"] <= 0 <= pb["high"] and pb["p"] > 0.05
    assert mcnemar_exact(better, base)["p"] == 0.5  # 2 vs 0 discordant: 2 * 1/4
    many = base.copy()
    many[np.flatnonzero(~base)[:20]] = True  # twenty more: clearly better
    assert paired_bootstrap(many, base, n_boot=4000)["low"] > 0 and mcnemar_exact(many, base)["p"] < 1e-4


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 200
    for t in range(trials):
        sample = rng.random(90) < 0.6
        lo, hi = bootstrap_ci(sample, n_boot=1000, seed=t)
        assert lo <= sample.mean() <= hi
        hits += lo <= 0.6 <= hi
    assert 0.88 <= hits / trials <= 0.99
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    assert bootstrap_ci([True, False] * 20, seed=3) == bootstrap_ci([True, False] * 20, seed=3)
