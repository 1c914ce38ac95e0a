"""The text rewrites of the competition's scorer (`math-eval`, `src/math_eval/main.py`), one per rule.

Each function is a small pure string rewrite that reproduces one rewrite of the official tool,
character class for character class (FACTS.md section 6; the parity cases in
`tests/data/scorer_parity.jsonl` hold the official verdicts). Where a pattern looks narrower or
wider than it could be (no `±` expansion, `\\big(` left alone, `\\geqslant` not mapped), that is the
official behaviour, kept on purpose: a kit that is "better" than the official scorer reports scores
the leaderboard will not give. `tunekit.evaluate.verify` decides when each rewrite runs.
"""
from __future__ import annotations

import itertools
import re

# --------------------------------------------------------------------- applied to every prediction
# A tag name starts with a letter; anything up to the next `>` after whitespace is attributes.
_XML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9_-]*(?:\s[^>]*)?>")


def strip_xml_tags(text: str) -> str:
    """Remove XML/HTML tags such as `<answer>` (models trained on tagged data emit them)."""
    return _XML_TAG.sub("", text)


# Whitespace between a digit and a digit or point, or after a point before a digit, is noise
# ("1 2 3", "0. 7"); not after a one-digit subscript (`\log_2 3` must stay two numbers).
_DIGIT_SPACE = re.compile(r"(?<=[0-9])(?<!_[0-9])\s+(?=[0-9.])|(?<=[.])\s+(?=[0-9])")


def join_digit_spaces(text: str) -> str:
    """Remove whitespace between digits and around a decimal point."""
    return _DIGIT_SPACE.sub("", text)


# --------------------------------------------------------------------- delimiter and noise retries
# `$$`, `\[`, `\]`, `\(`, `\)`, `\boxed{`, or a single `$` that is neither escaped nor right after
# a digit (`100$` is a price, not maths).
_DELIMITER = re.compile(r"(?<!\\)\$\$|(?<!\\)\\\[|(?<!\\)\\\]|(?<!\\|\d)\$|(?<!\\)\\\(|(?<!\\)\\\)|\\boxed\{")


def has_math_delimiters(text: str) -> bool:
    r"""True if the text has a maths delimiter Math-Verify's LaTeX search looks for."""
    return bool(_DELIMITER.search(text))


def ensure_math_delimiters(text: str) -> str:
    r"""The text wrapped in `$...$` when it has no maths delimiter (else unchanged)."""
    return text if has_math_delimiters(text) else f"${text}$"


# Characters that can start a maths expression: `$ \ digits letters ( { [ - +`. Anything else at the
# start (Japanese text, punctuation, markdown, spaces) is noise.
_NOT_MATH_START = r"[^\$\\0-9a-zA-Z({\[\-+]"
_NOISE_PREFIX = re.compile(rf"^{_NOT_MATH_START}+")
_DELIMITED_NOISE = re.compile(rf"^(\$\$|\$|\\\[|\\\()({_NOT_MATH_START}+)(.+)")


def strip_noise_prefix(text: str) -> str:
    r"""Drop leading characters that cannot start an expression (`答えは5です` -> `5です`).

    Just inside an opening delimiter too: `$答え：\frac12$` -> `$\frac12$`.
    """
    m = _DELIMITED_NOISE.match(text)
    if m:
        return m.group(1) + m.group(3)
    return _NOISE_PREFIX.sub("", text)


# --------------------------------------------------------------------- the extended parse's clean-up
_NESTED_DELIMS = re.compile(r"^(\$\$|\$)\s*\\(?:\(|\[)\s*(.*?)\s*\\(?:\)|\])\s*(\$\$|\$)$", re.DOTALL)


def strip_nested_delimiters(text: str) -> str:
    r"""`$\(\frac12\)$` -> `$\frac12$` (a whole answer inside two delimiter pairs)."""
    m = _NESTED_DELIMS.match(text)
    return m.group(1) + m.group(2) + m.group(3) if m else text


_DISPLAY_STYLE = re.compile(r"\\(?:displaystyle|textstyle|scriptstyle|scriptscriptstyle)(?:\s|(?=[\\{]))")


def strip_display_style(text: str) -> str:
    r"""Remove `\displaystyle`, `\textstyle`, ... (they change looks, not meaning)."""
    return _DISPLAY_STYLE.sub("", text)


_PROB_VAR = re.compile(r"P\s*\(\s*([A-Za-z])\s*=\s*([^)]+?)\s*\)")


def normalize_prob_vars(text: str) -> str:
    """Rename `P(X=k)` to the symbol `p_{Xk}`: the `=` inside the brackets confuses the parser."""
    return _PROB_VAR.sub(lambda m: f"p_{{{m.group(1)}{m.group(2).strip()}}}", text)


_VECTOR_CMD = re.compile(r"\\(?:vec|overrightarrow|boldsymbol|mathbf|bm)\s*(?:\{([^}]*)\}|([A-Za-z]))")
_VECTOR_ARROW = re.compile(r"([A-Za-z])[\u20D7\u20D1]")  # a⃗, a⃑ (combining arrows)
_ARROW_LEFT = re.compile(r"[\u20D7\u20D1]")
_VEC_NAME = re.compile(r"\\vec\s*\{([^}]+)\}")
_ONE_LETTER_VEC = re.compile(r"\\vec\s*\{([A-Za-z])\}")


def unify_vectors(text: str) -> str:
    r"""Write every vector notation (`\overrightarrow{AB}`, `\mathbf{a}`, a⃗) as `\vec{...}`."""
    text = _VECTOR_CMD.sub(lambda m: "\\vec{" + (m.group(1) or m.group(2)) + "}", text)
    text = _VECTOR_ARROW.sub(lambda m: "\\vec{" + m.group(1) + "}", text)
    return _ARROW_LEFT.sub("", text)


def drop_one_letter_vectors(text: str) -> str:
    r"""`\vec{a}` -> `a` (safe for the parser); `\vec{AB}` stays (else AB would read as A*B)."""
    return _ONE_LETTER_VEC.sub(r"\1", text)


def strip_single_letter_vectors(text: str) -> str:
    r"""Unify vector notations, then drop the arrow of one-letter vectors."""
    return drop_one_letter_vectors(unify_vectors(text))


def has_vector_notation(text: str) -> bool:
    """True if the text writes a vector with a command or a combining arrow."""
    return bool(_VECTOR_CMD.search(text)) or bool(_ARROW_LEFT.search(text))


def vector_names(unified: str) -> set[str]:
    r"""The names inside `\vec{...}` of an already unified text."""
    return set(_VEC_NAME.findall(unified))


# Only the forms with an l/r suffix, and \left \right \middle as plain prefixes (so `\leftarrow`
# loses its `\left` as well: the official pattern has no word boundary).
_SIZING = re.compile(r"\\(?:big{1,2}|Big{1,2})[lr]|\\(?:left|right|middle)")


def strip_bracket_sizing(text: str) -> str:
    r"""Remove `\bigl`, `\Bigr`, `\left`, `\right`, `\middle` (bracket sizes, not meaning)."""
    return _SIZING.sub("", text)


_SPACING = re.compile(r"\\(?:quad|qquad|[,;:!])|(?<!\\)\\ ")


def strip_latex_spacing(text: str) -> str:
    r"""Replace LaTeX spacing commands (`\,`, `\;`, `\quad`, `\ `) by a plain space."""
    return _SPACING.sub(" ", text)


# Closing delimiter, optional separator (punctuation, a connective word, `\text{or}`...), opening
# delimiter: parse() keeps only the last maths block, so `$a$, $b$` must become one block.
_BLOCK_JOIN = re.compile(
    r"(?:\$\$|(?<!\$)\$(?!\$)|\\\]|\\\))\s*"
    r"(?:[.,、，;]|または|かつ|\bor\b|\band\b"
    r"|\\(?:text|mathrm|textbf|textit)\s*\{\s*(?:または|かつ|or|and)\s*\})?"
    r"\s*(?:\$\$|(?<!\$)\$(?!\$)|\\\[|\\\()", re.IGNORECASE)


def merge_math_blocks(text: str) -> str:
    """Join adjacent maths blocks (`$a$, $b$`, `$a$ または $b$`) into one (`$a, b$`)."""
    return _BLOCK_JOIN.sub(", ", text)


_JP_INEQUALITIES = {r"\geqq": r"\geq", r"\leqq": r"\leq", r"\neqq": r"\neq",
                    r"\gneqq": r"\gneq", r"\lneqq": r"\lneq"}
_JP_INEQ = re.compile("|".join(re.escape(k) for k in _JP_INEQUALITIES))


def normalize_inequalities(text: str) -> str:
    r"""Map the Japanese school forms `\geqq`, `\leqq`, `\neqq`, `\gneqq`, `\lneqq` to `\geq`...."""
    return _JP_INEQ.sub(lambda m: _JP_INEQUALITIES[m.group(0)], text)


_CONNECTIVE = re.compile(
    r"\\(?:vee|lor|wedge|land)(?![a-zA-Z])"
    r"|\\(?:text|mathrm|textbf|textit)\s*\{\s*(?:または|かつ|or|and)\s*\}"
    r"|\b(?:or|and)\b", re.IGNORECASE)


def normalize_connectives(text: str) -> str:
    r"""Turn logical connectives (`\vee`, `\text{または}`, `or`, ...) into commas (a list of cases)."""
    return re.sub(r",\s*,", ",", _CONNECTIVE.sub(",", text))


_PLUS_MINUS = re.compile(r"\\(pm|mp)(?![a-zA-Z])")


def expand_plus_minus(text: str) -> list[str]:
    r"""Every sign choice for the `\pm`/`\mp` signs (both read alike); [text] if there are none.

    The Unicode `±` is NOT expanded, as officially.
    """
    found = list(_PLUS_MINUS.finditer(text))
    if not found:
        return [text]
    out = []
    for signs in itertools.product("+-", repeat=len(found)):
        pieces, last = [], 0
        for m, sign in zip(found, signs):
            pieces += [text[last:m.start()], sign]
            last = m.end()
        out.append("".join(pieces) + text[last:])
    return out


# --------------------------------------------------------------------- rewrites used by fallbacks
LOG_NO_BASE = re.compile(r"\\log(?![_a-zA-Z])")


def log_to_ln(text: str) -> str:
    r"""Read `\log x` without a base as the natural logarithm `\ln x`."""
    return LOG_NO_BASE.sub(lambda m: r"\ln", text)


_BARE_KEYWORDS = {"pi": r"\pi", "sin": r"\sin", "cos": r"\cos", "tan": r"\tan", "log": r"\log",
                  "ln": r"\ln", "exp": r"\exp", "sqrt": r"\sqrt"}
_BARE = re.compile(r"(?<![a-zA-Z\\])(" + "|".join(sorted(_BARE_KEYWORDS, key=len, reverse=True))
                   + r")(?![a-zA-Z])")


def bare_keywords_to_latex(text: str) -> str:
    """Write bare `pi`, `sin`, `sqrt`, ... as LaTeX commands (otherwise `pi` parses as p*i)."""
    return _BARE.sub(lambda m: _BARE_KEYWORDS[m.group(1)], text)


_DECIMAL = re.compile(r"(?<!\d)(\d+)\.(\d+)(?!\d)")


def decimals_to_fractions(text: str) -> str:
    r"""Write decimals as exact fractions (`0.625` -> `\frac{625}{1000}`) so they compare exactly."""
    return _DECIMAL.sub(lambda m: "\\frac{%d}{%d}" % (int(m.group(1) + m.group(2)), 10 ** len(m.group(2))),
                        text)


_DEGREE = re.compile(r"\^\{\\circ\}|\^\\circ|°")


def has_degrees(text: str) -> bool:
    r"""True if the text writes an angle in degrees (`^\circ`, `^{\circ}`, `°`; not `\degree`)."""
    return bool(_DEGREE.search(text))


def degrees_to_radians(text: str) -> str:
    r"""Rewrite `60^\circ` as `60\cdot\frac{\pi}{180}` so a degree answer compares to radians."""
    return _DEGREE.sub(lambda m: r"\cdot\frac{\pi}{180}", text)


_DECIMAL_DIGITS = re.compile(r"-?\d+\.(\d+)")


def decimal_places(text: str) -> int | None:
    """The fewest decimal places among the decimals written in `text` (None if there are none)."""
    found = _DECIMAL_DIGITS.findall(text)
    return min(len(d) for d in found) if found else None


# Protected while bracket kinds are swapped: maths delimiters and the index of an n-th root.
_PROTECT = (("\\[", "\x01DO\x01"), ("\\]", "\x01DC\x01"), ("\\(", "\x01IO\x01"), ("\\)", "\x01IC\x01"))
_ROOT_INDEX = re.compile(r"\\sqrt\[([^\]]*)\]")
_SIZED = ((r"\left(", r"\right)"), (r"\left[", r"\right]"), (r"\left\{", r"\right\}"))
_PLAIN = (("(", ")"), ("[", "]"), (r"\{", r"\}"))


def bracket_variants(text: str) -> list[str]:
    r"""The text with every bracket rewritten as `( )`, as `[ ]` and as `\{ \}` (those that differ).

    `\left(`-style brackets keep their `\left`/`\right`; maths delimiters `\( \) \[ \]` and the
    index of `\sqrt[n]` are left alone. Opening and closing brackets are replaced independently
    (no pairing), as officially.
    """
    s = text
    for plain, mark in _PROTECT:
        s = s.replace(plain, mark)
    roots: list[str] = []

    def _hide_root(m: re.Match) -> str:
        roots.append(m.group(0))
        return f"\x02SQRT{len(roots) - 1}\x02"

    s = _ROOT_INDEX.sub(_hide_root, s)
    found = False
    for opening in (r"\left\{", r"\left(", r"\left["):
        if opening in s:
            s, found = s.replace(opening, "\x00LO\x00"), True
    for closing in (r"\right\}", r"\right)", r"\right]"):
        if closing in s:
            s, found = s.replace(closing, "\x00RC\x00"), True
    for opening in (r"\{", "(", "["):
        if opening in s:
            s, found = s.replace(opening, "\x00PO\x00"), True
    for closing in (r"\}", ")", "]"):
        if closing in s:
            s, found = s.replace(closing, "\x00PC\x00"), True
    if not found:
        return []
    out = []
    for (sized_l, sized_r), (plain_l, plain_r) in zip(_SIZED, _PLAIN):
        v = s.replace("\x00LO\x00", sized_l).replace("\x00RC\x00", sized_r)
        v = v.replace("\x00PO\x00", plain_l).replace("\x00PC\x00", plain_r)
        for plain, mark in _PROTECT:
            v = v.replace(mark, plain)
        for i, root in enumerate(roots):
            v = v.replace(f"\x02SQRT{i}\x02", root)
        if v != text:
            out.append(v)
    return out


def _outer_delimiters_off(text: str) -> str:
    s = text.strip()
    for left, right in (("$$", "$$"), (r"\[", r"\]"), (r"\(", r"\)")):
        if s.startswith(left) and s.endswith(right):
            return s[len(left):-len(right)].strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        return s[1:-1].strip()
    return s


def _split_brace_level(s: str) -> list[str]:
    """Split at commas outside `{...}` (only curly braces count here); empty parts dropped at the end."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def dict_notation(text: str) -> list[str] | None:
    r"""A dict-like answer as maths: `{x: 1, y: 2}` -> [`$x = 1, y = 2$`], `{0: a, 1: b}` -> [`$a, b$`].

    None unless every comma-separated part is `key: value` and there are at least two (a single
    `2:3` is a ratio). Delimiters, `\boxed{}` and outer braces (`{}` or `\{\}`) are removed first.
    """
    s = _outer_delimiters_off(text)
    if s.startswith(r"\boxed{") and s.endswith("}"):
        s = s[7:-1].strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    elif s.startswith(r"\{") and s.endswith(r"\}"):
        s = s[2:-2].strip()
    pairs = []
    for part in _split_brace_level(s):
        key, colon, value = part.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not key or not value:
            return None
        pairs.append((key, value))
    if len(pairs) < 2:
        return None
    if all(k.lstrip("-").replace(".", "").isdigit() for k, _ in pairs):
        return ["$" + ", ".join(v for _, v in pairs) + "$"]
    return ["$" + ", ".join(f"{k} = {v}" for k, v in pairs) + "$"]


def clean_prediction(text: str) -> str:
    """The rewrites applied to every prediction before anything else: tags, then digit spaces."""
    return join_digit_spaces(strip_xml_tags(text))


def prepare_for_parse(text: str) -> str:
    """The clean-up the extended parse applies to an output or gold answer, in the official order."""
    text = text.replace("\n", " ").replace(r"\varnothing", r"\emptyset")
    text = strip_nested_delimiters(text)  # must run before the blocks are merged
    text = strip_display_style(text)
    text = normalize_prob_vars(text)
    text = strip_single_letter_vectors(text)
    text = strip_bracket_sizing(text)
    text = strip_latex_spacing(text)
    text = merge_math_blocks(text)
    text = normalize_inequalities(text)
    return normalize_connectives(text)
