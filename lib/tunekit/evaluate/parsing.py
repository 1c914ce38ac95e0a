"""Parse an answer the way the competition's scorer does (Math-Verify with the official settings).

Official settings (FACTS.md section 6): LaTeX extraction with `boxed="all"` and units
normalisation OFF (units removal would eat variables such as `ab`), expression extraction as a
fallback, the last math block wins. Before parsing, `normalize.prepare_for_parse` cleans the LaTeX
and `\\pm` is expanded into both signs.
"""
from __future__ import annotations

import functools
import re
import threading

from . import normalize as N


@functools.lru_cache(maxsize=1)
def _extraction_config():
    from latex2sympy2_extended.math_normalization import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    latex = LatexExtractionConfig(normalization_config=NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all",
        equations=False))
    return [latex, ExprExtractionConfig()]


def _timeout() -> int | None:
    # Math-Verify's timeouts use SIGALRM, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def mv_parse(text: str) -> list:
    """Math-Verify's parse() with the official extraction settings."""
    from math_verify import parse

    return parse(text, extraction_config=_extraction_config(), parsing_timeout=_timeout())


def mv_verify(gold, pred) -> bool:
    """Math-Verify's verify() on two parsed answers (gold first: the comparison is asymmetric)."""
    from math_verify import verify

    return bool(verify(list(gold), list(pred), timeout_seconds=_timeout()))


@functools.lru_cache(maxsize=4096)
def parse_answer(text: str) -> tuple:
    """Parse an answer the way the scorer does: LaTeX clean-up, `\\pm` expanded, Math-Verify parse.

    Returns Math-Verify's list as a tuple (cached: gold answers are parsed once per problem).
    """
    from latex2sympy2_extended.sets import FiniteSet as L2SFiniteSet
    from sympy import Eq, FiniteSet, S

    text = N.prepare_for_parse(text)
    variants = N.expand_plus_minus(text)
    if len(variants) == 1:
        parsed = mv_parse(text)
        if parsed and parsed[0] is S.EmptySet and not re.search(r"\\(?:emptyset|empty)\b", text):
            # `(a, b)` with symbolic a > b becomes an empty interval: read it as a point instead.
            return tuple(_reparse_as_tuple(text) or parsed)
        return tuple(parsed)
    values, equations = [], []
    for variant in variants:
        parsed = mv_parse(variant)
        if not parsed or isinstance(parsed[0], str):
            continue
        value = parsed[0]
        if isinstance(value, Eq):
            equations.append(value)
        elif isinstance(value, FiniteSet):
            values.extend(value.args)
        else:
            values.append(value)
    if equations and not values and len({e.lhs for e in equations}) == 1:
        rhs = []
        for e in equations:
            rhs.extend(e.rhs.args if isinstance(e.rhs, FiniteSet) else [e.rhs])
        # x = 1 \pm 2 means x is 3 or -1: one equation with the set of both roots.
        return (Eq(equations[0].lhs, L2SFiniteSet(*[r.doit() for r in rhs]), evaluate=False),)
    if values:
        return (FiniteSet(*values),)
    return tuple(mv_parse(text))


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    return parts + ["".join(cur)]


def _reparse_as_tuple(text: str) -> list | None:
    from sympy import Tuple

    inner = re.sub(r"^\s*(?:\$\$|\$|\\\[|\\\()|(?:\$\$|\$|\\\]|\\\))\s*$", "", text.strip())
    inner = re.sub(r"^\\boxed\{(.*)\}$", r"\1", inner.strip(), flags=re.S)
    m = re.match(r"^[A-Za-z]*\s*[(\[](.*)[)\]]$", inner.strip(), flags=re.S)
    if not m or "," not in m.group(1):
        return None
    items = []
    for part in _split_top_level(m.group(1)):
        parsed = mv_parse(f"${part.strip()}$")
        if not parsed or isinstance(parsed[0], str):
            return None
        items.append(parsed[0])
    return [Tuple(*items), inner]


# --------------------------------------------------------------------- fallbacks (soft)
