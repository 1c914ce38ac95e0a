"""Self-consistency, pass@k and maj@k on hand-written samples (tunekit.evaluate.voting)."""
from __future__ import annotations

from math import comb

import pytest

from tunekit.evaluate.voting import (NO_ANSWER, accuracy_vs_samples, group_answers, majority_index,
                                     pass_at_k, sample_counts)


def test_equivalent_answers_share_a_group_whatever_their_text():
    outs = [r"\boxed{\frac{1}{2}}", "答え：0.5", r"$\frac{2}{4}$", "$3$", "garbage ###", ""]
    groups = group_answers(outs)
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] != groups[0]
    assert groups[5] == NO_ANSWER


def test_majority_vote_picks_the_most_common_normalised_answer():
    outs = ["$3$", r"\boxed{\frac{1}{2}}", "0.5", "$3$", r"$\frac{1}{2}$"]
    groups = group_answers(outs)
    # 1/2 has three votes in three spellings, 3 has two: the first 1/2 sample wins.
    assert majority_index(groups) == 1


def test_tie_goes_to_the_answer_seen_first():
    groups = group_answers(["$4$", "$5$", "$5$", "$4$"])
    assert majority_index(groups) == 0


def test_samples_without_answer_do_not_vote():
    groups = group_answers(["", "", "$7$"])
    assert majority_index(groups) == 2
    assert majority_index(group_answers(["", ""])) == 0   # nobody answered: the first sample


def test_vote_over_the_first_k_samples_only():
    groups = group_answers(["$1$", "$2$", "$2$", "$1$", "$1$"])
    assert majority_index(groups, k=3) == 1
    assert majority_index(groups) == 0


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 5, 3), (10, 3, 1), (10, 3, 4), (8, 1, 8), (4, 2, 3)])
def test_pass_at_k_matches_the_definition(n, c, k):
    # Probability that a random k-subset of the n samples holds at least one correct sample.
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_edges():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 2, 3) == 1.0      # any 3 of 4 contain a correct one
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_sample_counts():
    assert sample_counts(1) == [1]
    assert sample_counts(4) == [1, 2, 4]
    assert sample_counts(6) == [1, 2, 4, 6]


def test_accuracy_vs_samples_curve():
    # Problem A: samples 2,2,9,9 with gold 9 -> maj@1 wrong, maj@4 tie -> first (2) wrong.
    # Problem B: samples 5,7,7,7 with gold 7 -> maj@1 wrong, maj@2 tie -> 5 wrong, maj@4 right.
    outs = [["$2$", "$2$", "$9$", "$9$"], ["$5$", "$7$", "$7$", "$7$"]]
    correct = [[False, False, True, True], [False, True, True, True]]
    curve = accuracy_vs_samples(correct, [group_answers(o) for o in outs])
    assert [r["k"] for r in curve] == [1, 2, 4]
    assert [r["maj@k"] for r in curve] == [0.0, 0.0, 0.5]
    assert curve[0]["pass@k"] == pytest.approx((0.5 + 0.75) / 2)
    assert curve[-1]["pass@k"] == 1.0
