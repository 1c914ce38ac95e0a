"""The scorer's verdicts, one rule at a time, and WHICH rule accepted each answer.

Every verdict asserted here is also a case of `tests/data/scorer_parity.jsonl` (the official
tool's measured verdicts, checked by test_eval_parity.py) or follows from one; this file adds what
the parity data cannot show: that the intended rule (not another) accepted the answer, that the
retries run in the official order, and what the kit reports where the official tool stops.
"""
from __future__ import annotations

import pytest

from tunekit.evaluate.verify import answer_key, check, equivalent, extract_answer


def ok(output, gold, method="soft"):
    v = check(output, gold, method)
    assert v.correct, f"{output!r} should match {gold!r} ({method})"
    return v.rule


def wrong(output, gold, method="soft"):
    v = check(output, gold, method)
    assert not v.correct, f"{output!r} should NOT match {gold!r} ({method}); matched by {v.rule}"
    return v


# ------------------------------------------------------------------ extraction settings
def test_boxed_last_block_and_units_off():
    assert ok(r"よって答えは \boxed{7} です。", "$7$") == "math-verify"
    wrong(r"よって答えは \boxed{8} です。", "$7$")
    ok(r"途中で $x = 2$ だが最終的に $x = 5$", "$5$")
    wrong(r"途中で $x = 5$ だが最終的に $x = 2$", "$5$")
    ok("$ab + bc$", "$ab + bc$")   # units removal would have eaten `ab`
    wrong("$ab + bc$", "$ab$")


# ------------------------------------------------------------------ the retries, in order
def test_prediction_is_wrapped_in_dollars_when_it_has_no_delimiter():
    assert ok(r"\frac{\sqrt{3}}{2}", r"$$\frac{\sqrt{3}}{2}$$").startswith("wrap-in-math+")
    wrong(r"\frac{\sqrt{3}}{3}", r"$$\frac{\sqrt{3}}{2}$$")


def test_leading_prose_is_stripped_as_officially():
    # The reported disagreement: correct officially, wrong in the kit before.
    assert ok("答えは5です。", "$$5$$").startswith("strip-noise+")
    wrong("答えは5です。", "$$6$$")
    assert ok("答え：\\sqrt{2}", r"$$\sqrt{2}$$") == "strip-noise+wrap-in-math+math-verify"
    assert ok("$答え：\\frac{1}{2}$", r"$$\frac{1}{2}$$").startswith("strip-noise+")
    # A Unicode minus cannot start an expression, so it is stripped with the prose.
    wrong("答えは−3です", "$$-3$$")
    ok("答えは-3です", "$$-3$$")


def test_a_set_of_answer_only_outputs_in_the_prompted_style_scores_like_officially():
    golds = ["$$5$$", r"$$\frac{1}{2}$$", r"$$2\sqrt{3}$$", "$$-4$$", "$$12$$"]
    outputs = ["答えは5です。", "答えは \\frac{1}{2} です。", "答え：2\\sqrt{3}", "答えは-4", "12個です。"]
    assert all(check(o, g).correct for o, g in zip(outputs, golds))


# ------------------------------------------------------------------ soft fallbacks and their order
def test_interval_gold_never_matches_an_inequality_prediction():
    # The second reported disagreement: officially wrong in this direction...
    for pred, gold in [("$1 < x < 3$", "$$(1, 3)$$"), (r"$1 \le x < 3$", "$$[1, 3)$$"),
                       ("$x > 2$", r"$$(2, \infty)$$"), (r"$x \le 0$", r"$$(-\infty, 0]$$"),
                       ("$|x| < 2$", "$$(-2, 2)$$")]:
        wrong(pred, gold)
    # ...right in the other (Math-Verify itself), and sets of cases convert both ways.
    assert ok("$(1, 3)$", "$$1 < x < 3$$") == "math-verify"
    assert ok("$x < -2, 1 < x$", r"$$(-\infty, -2) \cup (1, \infty)$$") == "inequality-interval"
    assert ok(r"$(-\infty, -2) \cup (1, \infty)$", "$$x < -2, 1 < x$$") == "inequality-interval"
    wrong("$(1, 3)$", r"$$1 \leqq x < 3$$")   # the closed end matters
    wrong("$x > 1, y > 3$", "$$x > 1, y > 2$$")


def test_each_fallback_accepts_its_case():
    assert ok(r"$\begin{pmatrix} 1 \\ 2 \end{pmatrix}$", "$$(1, 2)$$") == "matrix-vector"
    assert ok("$[1, 2]$", "$$(1, 2)$$") == "brackets"
    assert ok(r"$\log 2$", r"$$\ln 2$$") == "log-as-ln"
    assert ok("{x: 1, y: 2}", "$$x = 1, y = 2$$") == "dict-notation"
    assert ok("$AB$", r"$$\overrightarrow{AB}$$") == "vectors"
    assert ok(r"$60^\circ$", r"$$\frac{\pi}{3}$$") == "degrees-radians"
    assert ok("$0.333$", r"$$\frac{1}{3}$$") == "decimal-rounding"
    assert ok("2pi", r"$$2\pi$$") == "wrap-in-math+bare-keywords"
    assert ok("$0.667$", r"$$\frac{2}{3}$$", "strict") == "decimal-rounding"


def test_near_misses_stay_wrong():
    wrong(r"$\begin{pmatrix} 1 \\ 3 \end{pmatrix}$", "$$(1, 2)$$")
    wrong(r"$\log 3$", r"$$\ln 2$$")
    wrong(r"$\{x: 1, y: 3\}$", "$$x = 1, y = 2$$")
    wrong(r"$45^{\circ}$", r"$$\frac{\pi}{3}$$")
    wrong(r"$60\degree$", r"$$\frac{\pi}{3}$$")   # `\degree` is not read as degrees officially
    wrong("$0.34$", r"$$\frac{1}{3}$$")
    wrong("3pi", r"$$2\pi$$")
    wrong("$x = 1 ± 2$", "$$x = 3, -1$$")         # the Unicode ± is not expanded officially
    wrong(r"$\big( 3, 4 \big)$", "$$(3, 4)$$")     # `\big(` (no l/r) is not a sizing command officially


def test_plus_minus_means_both_roots():
    gold = r"$$\frac{1 \pm \sqrt{97}}{12}$$"
    ok(r"$\frac{1+\sqrt{97}}{12}, \frac{1-\sqrt{97}}{12}$", gold)
    ok(r"$x = \frac{1 \pm \sqrt{97}}{12}$", gold)
    wrong(r"$\frac{1+\sqrt{97}}{12}$", gold)   # one root is not the answer


# ------------------------------------------------------------------ strict and complex
def test_strict_and_complex():
    assert ok("$(x-1)(x+1)$", "$$(x - 1)(x + 1)$$", "strict") == "strict-structure"
    wrong("$x^2 - 1$", "$$(x - 1)(x + 1)$$", "strict")
    wrong(r"$\sqrt{8}$", r"$$2\sqrt{2}$$", "strict")
    assert ok("$(1+i)^2$", "$$2i$$", "complex") == "complex"
    wrong("$1 - 2i$", "$$1 + 2i$$", "complex")
    wrong("$(1+i)^2$", "$$2i$$", "complex-strict")   # value right, structure not
    assert ok("$2i$", "$$2i$$", "complex-strict") == "complex+strict"


# ------------------------------------------------------------------ contract details
def test_list_solution_any_may_match_and_missing_method_is_soft():
    ok(r"\boxed{4}", ["3", "4"])
    wrong(r"\boxed{5}", ["3", "4"])
    assert check("$0.5$", r"$\frac{1}{2}$", None).correct


@pytest.mark.parametrize("output", ["", "   ", "\x0e\x19\ufffd", "### 指示: ### 応答:", "$$", r"\boxed{"])
def test_garbage_is_wrong_not_a_crash(output):
    v = wrong(output, "$7$")
    assert v.official_failure is None


@pytest.mark.parametrize("output", [None, 3, 2.5, True, ["3"], {"a": 1}])
def test_an_output_that_is_not_a_string_is_wrong_and_flagged(output):
    v = wrong(output, "$$3$$")
    assert "not a string" in v.official_failure


def test_errors_the_official_tool_reraises_are_flagged():
    v = wrong("$3$", "$$3$$", "exact")            # unknown method: ValueError, the official run stops
    assert "ValueError" in v.official_failure
    v = wrong("$[1+i, 2]$", "$$(1+i, 2)$$", "complex")   # sympy: non-real interval (measured)
    assert "ValueError" in v.official_failure
    # Prose before a \pm answer: one sign choice parses as text, sympy refuses it (SympifyError).
    v = wrong(r"答えは1 \pm \sqrt{2}です。", r"$$1 \pm \sqrt{2}$$")
    assert "SympifyError" in v.official_failure
    assert check("$3$", "$$3$$", "soft").official_failure is None


def test_extract_answer_and_key_for_voting():
    half = extract_answer(r"\boxed{\frac{1}{2}}")
    assert answer_key(half) == "1/2"
    assert equivalent(half, extract_answer("答え：0.5"))
    assert answer_key(extract_answer("答え：\\sqrt{2}")) == "sqrt(2)"   # found once wrapped in $...$
    assert not equivalent(half, extract_answer("$\\frac{1}{3}$"))
    assert extract_answer("") == () and answer_key(()) == "" and extract_answer(None) == ()
