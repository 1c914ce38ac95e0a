"""The kit's scorer agrees with the official `math-eval` scorer on every case of the parity set.

`tests/data/scorer_parity.jsonl` holds cases written for the kit from a reading of the official
`main.py` (every rule, both directions, near misses, the inputs on which the official tool stops),
with the verdicts the official tool gave on them (measured with `tools/measure_official_scorer.py`
at its lock-file versions: math-verify 0.8.0, latex2sympy2-extended 1.10.2, sympy 1.14.0). A
verdict "crash:<type>" means the official CLI stops for the whole file there.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tunekit.evaluate.verify import check

CASES = [json.loads(line) for line in
         (Path(__file__).parent / "data" / "scorer_parity.jsonl").read_text(encoding="utf-8").splitlines()
         if line.strip()]


def _kit_verdict(case):
    v = check(case["output"], case["solution"], case["evaluation_method"])
    return "crash" if v.official_failure else v.correct


def test_every_case_agrees_with_the_official_verdict():
    disagree = []
    for case in CASES:
        want = "crash" if isinstance(case["official"], str) else case["official"]
        got = _kit_verdict(case)
        if got != want:
            disagree.append(f"{case['id']}: official {case['official']}, kit {got} "
                            f"({case['output']!r} vs {case['solution']!r}, {case['evaluation_method']})")
    assert not disagree, f"{len(disagree)}/{len(CASES)} disagree:\n" + "\n".join(disagree)


def test_the_parity_set_covers_every_rule_both_ways():
    by_rule = collections.defaultdict(collections.Counter)
    for case in CASES:
        by_rule[case["rule"]][str(case["official"])] += 1
    assert len(CASES) >= 150
    rules = ["math-verify", "xml-tags", "digit-spaces", "wrap-in-math", "strip-noise", "newlines",
             "varnothing", "nested-delimiters", "display-style", "prob-vars", "vector-notation",
             "bracket-sizing", "latex-spacing", "merge-blocks", "jp-inequalities", "connectives",
             "plus-minus", "spurious-emptyset", "matrix-vector", "inequality-interval", "brackets",
             "log-as-ln", "dict-notation", "vectors", "degrees-radians", "decimal-rounding",
             "decimal-fraction", "bare-keywords", "strict", "complex", "complex-strict", "gold-list",
             "default-method", "crash"]
    assert sorted(by_rule) == sorted(rules)
    for rule in rules:
        if rule != "crash":  # each rule has accepted cases and near misses that stay wrong
            assert by_rule[rule]["True"] and by_rule[rule]["False"], (rule, by_rule[rule])
    assert by_rule["crash"]["crash:TypeError"] and by_rule["crash"]["crash:ValueError"]


@pytest.mark.parametrize("pred, gold", [
    ("答えは5です。", "$$5$$"),                 # leading prose, reported disagreement 1
    ("$1 < x < 3$", "$$(1, 3)$$"),               # interval gold vs inequality, disagreement 2
    ("$(1, 3)$", "$$1 < x < 3$$"),               # ...and the direction that is right officially
])
def test_the_two_reported_disagreements_are_in_the_set(pred, gold):
    assert any(c["output"] == pred and c["solution"] == gold for c in CASES)
