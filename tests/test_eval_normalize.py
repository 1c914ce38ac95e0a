"""Each text normalisation of the scorer on hand-written inputs (tunekit.evaluate.normalize)."""
from __future__ import annotations

import pytest

from tunekit.evaluate import normalize as N


@pytest.mark.parametrize("text, want", [
    ("<answer>42</answer>", "42"),
    ('<answer type="math">x+1</answer>', "x+1"),
    ("<div><p>$3$</p></div>", "$3$"),
    (r"$\frac{1}{2}$", r"$\frac{1}{2}$"),   # LaTeX braces are not tags
    ("$x < 3$ and $y > 2$", "$x < 3$ and $y > 2$"),   # comparisons are not tags
])
def test_strip_xml_tags(text, want):
    assert N.strip_xml_tags(text) == want


@pytest.mark.parametrize("text, want", [
    ("1 2 3", "123"),
    ("0. 7", "0.7"),
    ("3 .14", "3.14"),
    ("x + 1", "x + 1"),
    (r"\log_2 3", r"\log_2 3"),   # a subscript digit is not glued to the argument
])
def test_join_digit_spaces(text, want):
    assert N.join_digit_spaces(text) == want


@pytest.mark.parametrize("text, want", [
    ("答え：5", "5"),
    ("答え: $x = 3$", "$x = 3$"),
    ("解答：\\sqrt{2}", "\\sqrt{2}"),
    ("**答え**：7", "7"),
    ("Answer: 12", "12"),
    ("最終的な答えは：9", "9"),
    ("5 が答え：ではない", "5 が答え：ではない"),   # only a LEADING label is dropped
])
def test_strip_answer_prefix(text, want):
    assert N.strip_answer_prefix(text) == want


@pytest.mark.parametrize("text, want", [
    (r"a\,b", "a b"), (r"a\;b", "a b"), (r"a\!b", "a b"), (r"a\quad b", "a  b"),
    (r"a\ b", "a b"), (r"\sin x", r"\sin x"), (r"a\\ b", r"a\\ b"),
])
def test_strip_latex_spacing(text, want):
    assert N.strip_latex_spacing(text) == want


def test_strip_bracket_sizing_keeps_other_commands():
    assert N.strip_bracket_sizing(r"\left( \frac{1}{2} \right)") == r"( \frac{1}{2} )"
    assert N.strip_bracket_sizing(r"\bigl[ x \bigr]") == "[ x ]"
    assert N.strip_bracket_sizing(r"A \bigcup B \leftarrow C") == r"A \bigcup B \leftarrow C"


@pytest.mark.parametrize("text, want", [
    (r"x \geqq 0", r"x \geq 0"), (r"x \leqq 1", r"x \leq 1"), (r"a \neqq b", r"a \neq b"),
    (r"x \geqslant 2", r"x \geq 2"), (r"x \geq 0", r"x \geq 0"),
])
def test_normalize_inequalities(text, want):
    assert N.normalize_inequalities(text) == want


@pytest.mark.parametrize("text, want", [
    (r"x < 0 \vee x > 1", "x < 0 , x > 1"),
    (r"x > 0 \land x < 1", "x > 0 , x < 1"),
    (r"a \text{または} b", "a , b"),
    (r"a \text{かつ} b", "a , b"),
    ("a or b", "a , b"),
    (r"a, \text{and} b", "a, b"),   # no double comma
    ("x < 0, x > 1", "x < 0, x > 1"),
])
def test_normalize_connectives(text, want):
    assert N.normalize_connectives(text) == want


@pytest.mark.parametrize("text, want", [
    ("$a$, $b$", "$a, b$"), ("$a$. $b$. $c$", "$a, b, c$"), ("$a$ または $b$", "$a, b$"),
    ("$a$ or $b$", "$a, b$"), (r"\[a\] \[b\]", r"\[a, b\]"), ("$$a$$ $$b$$", "$$a, b$$"),
    ("$x$ の値は $3$", "$x$ の値は $3$"),   # words in between: separate blocks stay separate
    ("$x < -2, 1 < x$", "$x < -2, 1 < x$"),
])
def test_merge_math_blocks(text, want):
    assert N.merge_math_blocks(text) == want


def test_normalize_prob_vars():
    assert N.normalize_prob_vars(r"P(X=0)=\frac{1}{28}") == r"p_{X0}=\frac{1}{28}"
    assert N.normalize_prob_vars("P( Y = 2 )") == "p_{Y2}"
    assert N.normalize_prob_vars("P(A)") == "P(A)"


def test_vectors_unify_and_strip_single_letters():
    assert N.unify_vectors(r"\overrightarrow{AB} + \mathbf{a} + \bm{v}") == r"\vec{AB} + \vec{a} + \vec{v}"
    assert N.unify_vectors("a\u20d7") == r"\vec{a}"
    assert N.strip_single_letter_vectors(r"\overrightarrow{AB} = 2\mathbf{a}") == r"\vec{AB} = 2a"
    assert N.vector_names(r"\overrightarrow{OA}\cdot\vec{b}") == {"OA", "b"}


@pytest.mark.parametrize("text, want", [
    (r"1 \pm 2", ["1 + 2", "1 - 2"]),
    (r"\frac{1 \pm \sqrt{97}}{12}", [r"\frac{1 + \sqrt{97}}{12}", r"\frac{1 - \sqrt{97}}{12}"]),
    (r"a \mp b", ["a - b", "a + b"]),
    ("x = 3 ± 1", ["x = 3 + 1", "x = 3 - 1"]),
    ("x = 3", ["x = 3"]),
])
def test_expand_plus_minus(text, want):
    assert N.expand_plus_minus(text) == want


def test_expand_plus_minus_two_signs_gives_four_variants():
    assert len(N.expand_plus_minus(r"\pm 1 \pm 2")) == 4


@pytest.mark.parametrize("text, want", [
    ("2pi", r"2\pi"), ("sin(x)", r"\sin(x)"), ("sqrt(2)", r"\sqrt(2)"),
    (r"\pi", r"\pi"), ("spin", "spin"), ("pig", "pig"),
])
def test_bare_keywords_to_latex(text, want):
    assert N.bare_keywords_to_latex(text) == want


@pytest.mark.parametrize("text, want", [
    ("0.625", r"\frac{625}{1000}"), ("0.5x", r"\frac{5}{10}x"), ("12", "12"), ("1.2.3", "1.2.3"),
])
def test_decimals_to_fractions(text, want):
    assert N.decimals_to_fractions(text) == want


@pytest.mark.parametrize("text", [r"60^\circ", r"60^{\circ}", "60°", r"60 ^ {\circ}"])
def test_degrees_to_radians(text):
    assert N.has_degrees(text)
    assert N.degrees_to_radians(text).replace(" ", "") == r"60\cdot\frac{\pi}{180}"


def test_no_degrees():
    assert not N.has_degrees(r"\frac{\pi}{3}")


def test_log_to_ln_only_without_base():
    assert N.log_to_ln(r"\log 2 + \log_2 8 + \log_{10} x") == r"\ln 2 + \log_2 8 + \log_{10} x"


def test_bracket_variants():
    assert N.bracket_variants("(1, 2)") == ["[1, 2]", r"\{1, 2\}"]
    assert N.bracket_variants(r"\{1, 2\}") == ["(1, 2)", "[1, 2]"]
    assert N.bracket_variants("3") == []
    # Math delimiters and the index of an n-th root are left alone.
    assert N.bracket_variants(r"\(\sqrt[3]{x}\)") == []
    assert r"\sqrt[3]" in N.bracket_variants(r"(\sqrt[3]{2}, 1)")[1]


@pytest.mark.parametrize("text, has", [
    ("$3$", True), (r"\(x\)", True), (r"\[x\]", True), (r"\boxed{3}", True), ("3", False),
    (r"\$3", False), (r"\sqrt{2}", False),
])
def test_has_math_delimiters(text, has):
    assert N.has_math_delimiters(text) is has


def test_clean_output_combines_the_output_rules():
    assert N.clean_output("<answer>答え：1 2</answer>") == "12"


def test_prepare_for_parse_combines_the_latex_rules():
    text = "$x \\geqq 1$ \\text{または} $x\\,\\leqq -1$"
    assert N.prepare_for_parse(text) == "$x \\geq 1, x \\leq -1$"
