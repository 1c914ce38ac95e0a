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
    ('<span title="a<b">7</span>', "7"),   # attributes run to the next `>`, even past a `<`
    ("3<br/>", "3<br/>"),                   # `<br/>`: no space before the slash, not a tag officially
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
    ("答えは5です。", "5です。"),
    ("答え: $x = 3$", "$x = 3$"),
    ("解答：\\sqrt{2}", "\\sqrt{2}"),
    ("**答え**：7", "7"),
    ("答えは−3", "3"),                        # U+2212 cannot start an expression: stripped too
    ("答えは-3", "-3"),
    ("$答え：\\frac{1}{2}$", "$\\frac{1}{2}$"),   # noise just inside an opening delimiter
    ("\\[答え：2\\]", "\\[2\\]"),
    ("Answer: 12", "Answer: 12"),            # letters may start an expression: nothing stripped
    ("5 が答え", "5 が答え"),                 # only LEADING noise
])
def test_strip_noise_prefix(text, want):
    assert N.strip_noise_prefix(text) == want


@pytest.mark.parametrize("text, want", [
    (r"a\,b", "a b"), (r"a\;b", "a b"), (r"a\!b", "a b"), (r"a\quad b", "a  b"),
    (r"a\ b", "a b"), (r"\sin x", r"\sin x"), (r"a\\ b", r"a\\ b"),
])
def test_strip_latex_spacing(text, want):
    assert N.strip_latex_spacing(text) == want


def test_strip_bracket_sizing_as_officially():
    assert N.strip_bracket_sizing(r"\left( \frac{1}{2} \right)") == r"( \frac{1}{2} )"
    assert N.strip_bracket_sizing(r"\bigl[ x \bigr]") == "[ x ]"
    assert N.strip_bracket_sizing(r"\big( x \big)") == r"\big( x \big)"      # no l/r suffix: kept
    assert N.strip_bracket_sizing(r"A \bigcup B \leftarrow C") == r"A \bigcup B arrow C"  # no word boundary


@pytest.mark.parametrize("text, want", [
    (r"x \geqq 0", r"x \geq 0"), (r"x \leqq 1", r"x \leq 1"), (r"a \neqq b", r"a \neq b"),
    (r"x \gneqq 2", r"x \gneq 2"), (r"x \geq 0", r"x \geq 0"),
    (r"x \geqslant 2", r"x \geqslant 2"),   # not in the official map
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
    assert N.vector_names(N.unify_vectors(r"\overrightarrow{OA}\cdot\vec{b}")) == {"OA", "b"}
    assert N.has_vector_notation("a\u20d7") and not N.has_vector_notation("AB")


@pytest.mark.parametrize("text, want", [
    (r"1 \pm 2", ["1 + 2", "1 - 2"]),
    (r"\frac{1 \pm \sqrt{97}}{12}", [r"\frac{1 + \sqrt{97}}{12}", r"\frac{1 - \sqrt{97}}{12}"]),
    (r"a \mp b", ["a + b", "a - b"]),     # \mp takes the same sign choices as \pm
    ("x = 3 ± 1", ["x = 3 ± 1"]),          # the Unicode sign is not expanded officially
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
    ("0.625", r"\frac{625}{1000}"), ("0.5x", r"\frac{5}{10}x"), ("12", "12"),
    ("1.2.3", r"\frac{12}{10}.3"),
])
def test_decimals_to_fractions(text, want):
    assert N.decimals_to_fractions(text) == want


@pytest.mark.parametrize("text", [r"60^\circ", r"60^{\circ}", "60°"])
def test_degrees_to_radians(text):
    assert N.has_degrees(text)
    assert N.degrees_to_radians(text) == r"60\cdot\frac{\pi}{180}"


@pytest.mark.parametrize("text", [r"\frac{\pi}{3}", r"60\degree", r"60 ^ {\circ}"])
def test_no_degrees(text):
    assert not N.has_degrees(text)   # `\degree` and spaced forms are not read as degrees officially


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
    (r"\$3", False), (r"\sqrt{2}", False), ("100$", False), ("$$5$$", True),
])
def test_has_math_delimiters(text, has):
    assert N.has_math_delimiters(text) is has


def test_ensure_math_delimiters_wraps_in_single_dollars():
    assert N.ensure_math_delimiters(r"\sqrt{2}") == r"$\sqrt{2}$"
    assert N.ensure_math_delimiters("$x$") == "$x$"


@pytest.mark.parametrize("text, want", [
    ("{x: 1, y: 2}", ["$x = 1, y = 2$"]),
    (r"$\{a: 3, b: -1\}$", ["$a = 3, b = -1$"]),
    (r"{0: \frac{1}{28}, 1: \frac{3}{7}}", [r"$\frac{1}{28}, \frac{3}{7}$"]),
    ("2:3", None),                     # one pair is a ratio
    ("{x: 1, y}", None),
    (r"\boxed{x: 1, y: 2}", ["$x = 1, y = 2$"]),
])
def test_dict_notation(text, want):
    assert N.dict_notation(text) == want


def test_nested_delimiters_and_display_style():
    assert N.strip_nested_delimiters(r"$\(\frac{1}{2}\)$") == r"$\frac{1}{2}$"
    assert N.strip_nested_delimiters(r"$x$ and $\(y\)$") == r"$x$ and $\(y\)$"
    assert N.strip_display_style(r"\displaystyle\frac{1}{2} + \textstyle x") == r"\frac{1}{2} + x"


def test_clean_prediction_combines_the_output_rules():
    assert N.clean_prediction("<answer>答え：1 2</answer>") == "答え：12"


def test_prepare_for_parse_combines_the_latex_rules():
    text = "$x \\geqq 1$ \\text{または} $x\\,\\leqq -1$"
    assert N.prepare_for_parse(text) == "$x \\geq 1, x \\leq -1$"
