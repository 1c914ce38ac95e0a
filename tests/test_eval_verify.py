"""The scorer's verdicts, one rule at a time, on hand-written Japanese-school-maths answers.

Each positive case also asserts WHICH rule accepted it, so a case that passes for another reason
(e.g. plain Math-Verify) does not count as a test of the fallback. Each rule has a near miss that
must stay wrong.
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


# ------------------------------------------------------------------ official extraction settings
def test_boxed_answer_is_extracted():
    assert ok(r"よって答えは \boxed{7} です。", "$7$") == "math-verify"
    wrong(r"よって答えは \boxed{8} です。", "$7$")


def test_last_math_block_wins():
    ok(r"途中で $x = 2$ を得るが、最終的に $x = 5$", "$5$")
    wrong(r"途中で $x = 5$ を得るが、最終的に $x = 2$", "$5$")


def test_units_normalisation_is_off_so_variables_survive():
    # With Math-Verify's default units removal, `ab`/`bc` would be read as units and dropped.
    ok("$ab + bc$", "$ab + bc$")
    wrong("$ab + bc$", "$ab$")


def test_expression_fallback_without_latex():
    ok("答えは 12 です", "12")
    wrong("答えは 13 です", "12")


def test_label_equation_equals_its_value():
    assert ok("120", "$$a = 120$$") == "math-verify"
    ok("$a = 120$", "120")
    wrong("121", "$$a = 120$$")


# ------------------------------------------------------------------ output clean-up rules
def test_xml_tags_are_ignored():
    ok(r"<answer>$\sqrt{2}$</answer>", r"$\sqrt{2}$")


def test_spaces_between_digits_are_ignored():
    ok("$1 2 3$", "$123$")
    ok("$0. 7$", "$0.7$")


def test_answer_prefix_is_dropped_before_wrapping_in_math():
    assert ok(r"答え：\sqrt{2}", r"$\sqrt{2}$") == "wrap-in-math+math-verify"
    wrong(r"答え：\sqrt{3}", r"$\sqrt{2}$")


def test_bare_latex_is_wrapped_in_math_when_nothing_is_found():
    assert ok(r"\frac{\sqrt{3}}{2}", r"$\frac{\sqrt{3}}{2}$").startswith("wrap-in-math")
    wrong(r"\frac{\sqrt{3}}{3}", r"$\frac{\sqrt{3}}{2}$")


# ------------------------------------------------------------------ LaTeX clean-up rules
def test_japanese_inequalities():
    ok(r"$x \geqq 3$", r"$x \geq 3$")
    wrong(r"$x \leqq 3$", r"$x \geq 3$")


def test_latex_spacing_in_gold():
    ok("$a > 0, b < 0$", r"\[a > 0,\ b < 0\]")


def test_several_math_blocks_are_one_answer():
    ok("$x = 1$, $x = 2$", "$x = 1, 2$")
    ok(r"$x < -2$ または $1 < x$", r"$(-\infty, -2) \cup (1, \infty)$")


def test_probability_notation():
    ok(r"$P(X=0)=\frac{1}{28}$", r"$P(X=0)=\frac{1}{28}$")
    wrong(r"$P(X=0)=\frac{1}{27}$", r"$P(X=0)=\frac{1}{28}$")


# ------------------------------------------------------------------ soft fallbacks
def test_plus_minus_means_both_roots():
    gold = r"$$\frac{1 \pm \sqrt{97}}{12}$$"
    ok(r"$\frac{1+\sqrt{97}}{12}, \frac{1-\sqrt{97}}{12}$", gold)
    ok(r"$x = \frac{1 \pm \sqrt{97}}{12}$", gold)
    wrong(r"$\frac{1+\sqrt{97}}{12}$", gold)   # one root is not the answer


def test_inequalities_vs_intervals_both_ways():
    interval = r"$(-\infty, -2) \cup (1, \infty)$"
    assert ok("$x < -2, 1 < x$", interval) == "inequality-interval"
    assert ok(interval, "$x < -2, 1 < x$") == "inequality-interval"
    ok(r"$[1, 3)$", r"$1 \leqq x < 3$")
    wrong(r"$(1, 3)$", r"$1 \leqq x < 3$")   # closed end matters
    wrong("$x < -2, 2 < x$", interval)


def test_inequality_systems_compare_as_sets_of_conditions():
    assert ok("$y > 0, x > 1$", "$x > 1, y > 0$") in ("math-verify", "inequality-interval")
    ok("$1 < x$", "$x > 1$")


def test_matrix_vector_equals_tuple():
    assert ok(r"$\begin{pmatrix} 1 \\ 2 \end{pmatrix}$", "$(1, 2)$") == "matrix-vector"
    assert ok("$(1, 2)$", r"$\begin{pmatrix} 1 & 2 \end{pmatrix}$") == "matrix-vector"
    wrong(r"$\begin{pmatrix} 1 \\ 3 \end{pmatrix}$", "$(1, 2)$")


def test_bracket_kinds():
    assert ok("$[1, 2]$", "$(1, 2)$") == "brackets"
    wrong("$[1, 3]$", "$(1, 2)$")


def test_log_without_base_is_natural_log():
    assert ok(r"$\log 2$", r"$\ln 2$") == "log-as-ln"
    wrong(r"$\log 3$", r"$\ln 2$")


def test_vector_notations():
    ok(r"$\overrightarrow{AB} = 2\vec{a}$", r"$\vec{AB} = 2\mathbf{a}$")
    ok(r"$\vec{a} + \vec{b}$", r"$\mathbf{a} + \boldsymbol{b}$")
    wrong(r"$\vec{a} - \vec{b}$", r"$\mathbf{a} + \boldsymbol{b}$")
    # A vector name written bare on one side still names the vector of the other side.
    gold = r"$\frac{1}{2}\overrightarrow{AB} + \overrightarrow{AC}$"
    assert ok(r"$\frac{1}{2}AB + AC$", gold) == "vectors"
    wrong(r"$\frac{1}{2}AB - AC$", gold)


def test_degrees_vs_radians():
    assert ok(r"$60^\circ$", r"$\frac{\pi}{3}$") == "degrees-radians"
    assert ok(r"$\frac{\pi}{3}$", r"$60^{\circ}$") == "degrees-radians"
    wrong(r"$45^\circ$", r"$\frac{\pi}{3}$")


def test_decimals_vs_fractions():
    ok("$0.5$", r"$\frac{1}{2}$")
    assert ok("$0.333$", r"$\frac{1}{3}$") == "decimal-rounding"
    ok(r"$0.625x$", r"$\frac{5}{8}x$")
    wrong("$0.34$", r"$\frac{1}{3}$")


def test_bare_keywords():
    assert ok("2pi", r"$2\pi$").endswith("bare-keywords")
    wrong("3pi", r"$2\pi$")


def test_equivalent_forms_count_in_soft_but_not_in_strict():
    ok("$x^2 + 2x + 1$", "$(x+1)^2$", "soft")
    wrong("$x^2 + 2x + 1$", "$(x+1)^2$", "strict")
    assert ok("$(x+1)^{2}$", "$(x+1)^2$", "strict") == "strict-structure"
    wrong(r"$2 \cdot 3$", "$6$", "strict")
    wrong(r"$\sqrt{8}$", r"$2\sqrt{2}$", "strict")


def test_complex_reads_i_as_imaginary_unit():
    assert ok("$(1+i)^2$", "$2i$", "complex") == "complex"
    wrong("$(1+i)^2$", "$2$", "complex")
    # complex-strict: the value must match AND the structure must be the same.
    wrong("$(1+i)^2$", "$2i$", "complex-strict")
    ok("$2i$", "$2i$", "complex-strict")


# ------------------------------------------------------------------ contract details
def test_list_solution_any_may_match():
    ok(r"\boxed{4}", ["3", "4"])
    wrong(r"\boxed{5}", ["3", "4"])


def test_missing_method_means_soft():
    assert check("$0.5$", r"$\frac{1}{2}$", None).correct


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="evaluation_method"):
        check("1", "1", "fuzzy")


@pytest.mark.parametrize("output", ["", "   ", "\x0e\x19\ufffd", "### 指示: ### 応答:", "$$", r"\boxed{"])
def test_garbage_is_wrong_not_a_crash(output):
    wrong(output, "$7$")


def test_extract_answer_and_key_for_voting():
    half = extract_answer(r"\boxed{\frac{1}{2}}")
    assert answer_key(half) == "1/2"
    assert equivalent(half, extract_answer("答え：0.5"))
    assert not equivalent(half, extract_answer("$\\frac{1}{3}$"))
    assert extract_answer("") == () and answer_key(()) == ""
