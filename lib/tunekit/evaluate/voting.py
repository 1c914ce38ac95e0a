"""Several answers per problem: self-consistency (majority vote), pass@k and maj@k.

Answers are grouped by their normalised value, not by their text: `\\frac{1}{2}`, `0.5` and
`答え：$\\frac{1}{2}$` are one vote. Groups are keyed by the parsed answer (`verify.answer_key`)
and keys whose values Math-Verify finds equal are merged. Samples with no extractable answer
do not vote (unless no sample has one). Ties go to the answer seen first.
"""
from __future__ import annotations

from math import comb
from typing import Sequence

from .verify import answer_key, equivalent, extract_answer

NO_ANSWER = -1


def group_answers(outputs: Sequence[str]) -> list[int]:
    """A group id per output (equal ids = equivalent answers); NO_ANSWER where none was found."""
    reps: list[tuple] = []          # parsed answer of each group's first member
    key_to_group: dict[str, int] = {}
    groups = []
    for out in outputs:
        parsed = extract_answer(out)
        key = answer_key(parsed)
        if not key:
            groups.append(NO_ANSWER)
            continue
        if key not in key_to_group:
            match = next((g for g, rep in enumerate(reps) if equivalent(rep, parsed)), None)
            if match is None:
                reps.append(parsed)
                match = len(reps) - 1
            key_to_group[key] = match
        groups.append(key_to_group[key])
    return groups


def majority_index(groups: Sequence[int], k: int | None = None) -> int:
    """Index of the sample whose answer wins the vote among the first k samples (all if None)."""
    groups = list(groups[:k] if k else groups)
    counts: dict[int, int] = {}
    for g in groups:
        if g != NO_ANSWER:
            counts[g] = counts.get(g, 0) + 1
    if not counts:
        return 0
    best = max(counts.values())
    # The first sample (in order) whose group has the top count: ties go to the earliest answer.
    return next(i for i, g in enumerate(groups) if counts.get(g) == best)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def sample_counts(n: int) -> list[int]:
    """The k values reported for n samples: 1, 2, 4, ... and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def accuracy_vs_samples(correct: Sequence[Sequence[bool]], groups: Sequence[Sequence[int]],
                        ks: Sequence[int] | None = None) -> list[dict[str, float]]:
    """Mean pass@k and maj@k over problems for each k (maj@k votes over the first k samples).

    Args:
        correct: per problem, whether each sample is correct.
        groups: per problem, `group_answers` of its samples.
    """
    if not correct:
        return []
    n = min(len(c) for c in correct)
    rows = []
    for k in ks or sample_counts(n):
        passes = [pass_at_k(len(c), sum(c), k) for c in correct]
        majs = [bool(c[majority_index(g, k)]) for c, g in zip(correct, groups)]
        rows.append({"k": k, "pass@k": sum(passes) / len(passes), "maj@k": sum(majs) / len(majs)})
    return rows
