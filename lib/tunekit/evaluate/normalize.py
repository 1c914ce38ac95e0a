"""Text normalisations applied before Math-Verify parses a model output or a gold answer.

Each function is a small pure string rewrite named after the rule it implements. They reproduce
the behaviour the competition's `math-eval` scorer documents for Japanese school maths (FACTS.md
section 6): the rewrites of the output (XML tags, spaces between digits, answer prefixes), the
LaTeX cleanups done before parsing (spacing, bracket sizing, Japanese inequalities, connectives,
several math blocks, P(X=k), vectors) and the rewrites used by the fallbacks (plus-minus, bracket
kinds, bare keywords, decimals, degrees, log). `tunekit.evaluate.verify` decides when each runs.
"""
from __future__ import annotations

import itertools
import re

# --------------------------------------------------------------------- output clean-up
_XML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]*(?:\s[^<>]*)?>")


def strip_xml_tags(text: str) -> str:
    """Remove XML/HTML tags such as `<answer>` (models trained on tagged data emit them)."""
    return _XML_TAG.sub("", text)


# A space between two digits, or after a decimal point, is noise ("1 2 3", "0. 7"). Not after a
# subscript digit: `\log_2 3` must not become `\log_23`.
_DIGIT_SPACE = re.compile(r"(?<=[0-9])(?<!_[0-9])\s+(?=[0-9.])|(?<=\.)\s+(?=[0-9])")


def join_digit_spaces(text: str) -> str:
    """Remove whitespace between digits and around a decimal point."""
    return _DIGIT_SPACE.sub("", text)


# Leading answer labels that are not part of the answer: 答え：, 答：, 解答:, 最終的な答え:, Answer:.
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:\*\*)?(?:最終的な答え|最終解答|解答|答え|答|final answer|answer)\s*(?:は)?\s*(?:\*\*)?"
    r"\s*[:：]\s*(?:\*\*)?", re.IGNORECASE)


def strip_answer_prefix(text: str) -> str:
    """Drop a leading answer label such as `答え：` so the rest can be read as mathematics."""
    return _ANSWER_PREFIX.sub("", text, count=1)


# --------------------------------------------------------------------- LaTeX clean-up
_SPACING = re.compile(r"\\(?:qquad|quad|[,;:!])|(?<!\\)\\ ")


def strip_latex_spacing(text: str) -> str:
    r"""Replace LaTeX spacing commands (`\,`, `\;`, `\quad`, `\ `) by a plain space."""
    return _SPACING.sub(" ", text)


_SIZING = re.compile(r"\\(?:big{1,2}|Big{1,2})[lr]?(?![A-Za-z])|\\(?:left|right|middle)(?![A-Za-z])")


def strip_bracket_sizing(text: str) -> str:
    r"""Remove bracket sizing (`\left`, `\right`, `\bigl`, ...): it changes looks, not meaning."""
    return _SIZING.sub("", text)


_JP_INEQUALITIES = {r"\geqq": r"\geq", r"\leqq": r"\leq", r"\neqq": r"\neq",
                    r"\geqslant": r"\geq", r"\leqslant": r"\leq"}
_JP_INEQ = re.compile("|".join(re.escape(k) + r"(?![A-Za-z])" for k in _JP_INEQUALITIES))


def normalize_inequalities(text: str) -> str:
    r"""Map the Japanese school forms `\geqq`, `\leqq` (and `\geqslant`...) to `\geq`, `\leq`."""
    return _JP_INEQ.sub(lambda m: _JP_INEQUALITIES[m.group(0)], text)


_CONNECTIVE = re.compile(
    r"\\(?:vee|lor|wedge|land)(?![A-Za-z])"
    r"|\\(?:text|mathrm|textbf|textit)\s*\{\s*(?:または|かつ|or|and)\s*\}"
    r"|\b(?:or|and)\b", re.IGNORECASE)


def normalize_connectives(text: str) -> str:
    r"""Turn logical connectives (`\vee`, `\text{または}`, `or`, ...) into commas (a list of cases)."""
    text = _CONNECTIVE.sub(",", text)
    return re.sub(r",\s*,", ",", text)


# Closing delimiter, optional separator (punctuation or a connective), opening delimiter.
_BLOCK_JOIN = re.compile(
    r"(?:\$\$|(?<!\$)\$(?!\$)|\\\]|\\\))\s*"
    r"(?:[.,、，;]|または|かつ|\bor\b|\band\b"
    r"|\\(?:text|mathrm)\s*\{\s*(?:または|かつ|or|and)\s*\})?"
    r"\s*(?:\$\$|(?<!\$)\$(?!\$)|\\\[|\\\()", re.IGNORECASE)


def merge_math_blocks(text: str) -> str:
    """Join adjacent math blocks (`$a$, $b$`) into one (`$a, b$`): parse() keeps only the last block."""
    return _BLOCK_JOIN.sub(", ", text)


_PROB_VAR = re.compile(r"P\s*\(\s*([A-Za-z])\s*=\s*([^()]+?)\s*\)")


def normalize_prob_vars(text: str) -> str:
    """Rename `P(X=k)` to the symbol `p_{Xk}`: the `=` inside the brackets confuses the parser."""
    return _PROB_VAR.sub(lambda m: f"p_{{{m.group(1)}{m.group(2).strip()}}}", text)


_VECTOR_CMD = re.compile(r"\\(?:vec|overrightarrow|boldsymbol|mathbf|bm)\s*(?:\{([^{}]*)\}|([A-Za-z]))")
_VECTOR_ARROW = re.compile(r"([A-Za-z])[\u20D7\u20D1]")


def unify_vectors(text: str) -> str:
    r"""Write every vector notation (`\overrightarrow{AB}`, `\mathbf{a}`, a⃗) as `\vec{...}`."""
    text = _VECTOR_CMD.sub(lambda m: "\\vec{" + (m.group(1) or m.group(2)) + "}", text)
    text = _VECTOR_ARROW.sub(lambda m: "\\vec{" + m.group(1) + "}", text)
    return re.sub(r"[\u20D7\u20D1]", "", text)


def strip_single_letter_vectors(text: str) -> str:
    r"""Unify vectors, then drop the arrow of one-letter vectors (`\vec{a}` -> `a`); `\vec{AB}` stays."""
    return re.sub(r"\\vec\s*\{([A-Za-z])\}", r"\1", unify_vectors(text))


def vector_names(text: str) -> set[str]:
    r"""The names written as `\vec{...}` after `unify_vectors`."""
    return set(re.findall(r"\\vec\s*\{([^{}]+)\}", unify_vectors(text)))


# --------------------------------------------------------------------- rewrites used by fallbacks
_PLUS_MINUS = re.compile(r"\\(pm|mp)(?![A-Za-z])|±|∓")


def expand_plus_minus(text: str) -> list[str]:
    r"""All sign choices of `\pm`/`\mp` (`±`): `1 \pm 2` -> [`1 + 2`, `1 - 2`]; [text] if none."""
    found = list(_PLUS_MINUS.finditer(text))
    if not found:
        return [text]
    out = []
    for signs in itertools.product("+-", repeat=len(found)):
        pieces, last = [], 0
        for m, sign in zip(found, signs):
            minus_first = m.group(0) in (r"\mp", "∓")
            pieces += [text[last:m.start()], {"+": "-", "-": "+"}[sign] if minus_first else sign]
            last = m.end()
        out.append("".join(pieces) + text[last:])
    return out


_BARE_KEYWORDS = {"sqrt": r"\sqrt", "sin": r"\sin", "cos": r"\cos", "tan": r"\tan",
                  "log": r"\log", "exp": r"\exp", "pi": r"\pi", "ln": r"\ln"}
_BARE = re.compile(r"(?<![A-Za-z\\])(" + "|".join(sorted(_BARE_KEYWORDS, key=len, reverse=True))
                   + r")(?![A-Za-z])")


def bare_keywords_to_latex(text: str) -> str:
    """Write bare `pi`, `sin`, `sqrt`, ... as LaTeX commands (otherwise `pi` parses as p*i)."""
    return _BARE.sub(lambda m: _BARE_KEYWORDS[m.group(1)], text)


_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")


def decimals_to_fractions(text: str) -> str:
    r"""Write decimals as exact fractions (`0.625` -> `\frac{625}{1000}`) so they compare exactly."""
    return _DECIMAL.sub(lambda m: "\\frac{%d}{%d}" % (int(m.group(1) + m.group(2)), 10 ** len(m.group(2))),
                        text)


_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![A-Za-z])")


def has_degrees(text: str) -> bool:
    r"""True if the text writes an angle in degrees (`^\circ`, `°`)."""
    return bool(_DEGREE.search(text))


def degrees_to_radians(text: str) -> str:
    r"""Rewrite `60^\circ` as `60\cdot\frac{\pi}{180}` so a degree answer compares to radians."""
    return _DEGREE.sub(lambda m: r"\cdot\frac{\pi}{180}", text)


_LOG_NO_BASE = re.compile(r"\\log(?![_A-Za-z])")


def log_to_ln(text: str) -> str:
    r"""Read `\log x` without a base as the natural logarithm `\ln x` (Japanese high-school usage)."""
    return _LOG_NO_BASE.sub(lambda m: r"\ln", text)


def bracket_variants(text: str) -> list[str]:
    r"""The text with every bracket pair rewritten as `( )`, `[ ]` and `\{ \}` (those that differ).

    Math delimiters `\( \) \[ \]` and the index of `\sqrt[n]` are left alone. Used so that a
    point `(1, 2)` written `[1, 2]`, or a set written with round brackets, still compares.
    """
    protected: list[str] = []

    def _protect(m: re.Match) -> str:
        protected.append(m.group(0))
        return f"\x00{len(protected) - 1}\x00"

    s = re.sub(r"\\sqrt\[[^\]]*\]|\\[\[\]()]", _protect, text)
    opened = re.sub(r"\\\{|[(\[]", "\x01", s)
    marked = re.sub(r"\\\}|[)\]]", "\x02", opened)
    if marked == s:
        return []
    out = []
    for left, right in (("(", ")"), ("[", "]"), (r"\{", r"\}")):
        v = marked.replace("\x01", left).replace("\x02", right)
        v = re.sub("\x00(\\d+)\x00", lambda m: protected[int(m.group(1))], v)
        if v != text:
            out.append(v)
    return out


_DELIMITER = re.compile(r"(?<!\\)\$|(?<!\\)\\[\[\]()]|\\boxed\{")


def has_math_delimiters(text: str) -> bool:
    r"""True if the text contains `$`, `\[`, `\(` or `\boxed{` (what Math-Verify's LaTeX search needs)."""
    return bool(_DELIMITER.search(text))


def wrap_in_math(text: str) -> str:
    r"""Wrap a bare answer in `$$...$$` so LaTeX such as `\sqrt{2}` is parsed, not just its digits."""
    return f"$${text.strip()}$$"


def clean_output(text: str) -> str:
    """The clean-up applied to every model output before scoring (tags, digit spaces, prefix)."""
    return strip_answer_prefix(join_digit_spaces(strip_xml_tags(text)))


def prepare_for_parse(text: str) -> str:
    """The LaTeX clean-up applied to outputs and gold answers just before parsing."""
    text = text.replace("\n", " ").replace(r"\varnothing", r"\emptyset")
    text = normalize_prob_vars(text)
    text = strip_single_letter_vectors(text)
    text = strip_bracket_sizing(text)
    text = strip_latex_spacing(text)
    text = merge_math_blocks(text)
    text = normalize_inequalities(text)
    return normalize_connectives(text)
