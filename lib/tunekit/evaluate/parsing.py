"""Parse an answer the way the competition's scorer does: its clean-up, then Math-Verify.

Official settings (FACTS.md section 6): LaTeX extraction with `boxed="all"` and units
normalisation OFF (units removal would eat variables such as `ab`), expression extraction as a
fallback, the last maths block wins. `extended_parse` is the official "extended parse": the
clean-up of `normalize.prepare_for_parse`, `\\pm`/`\\mp` expanded into every sign choice, and a
point such as `(3, 1)` that Math-Verify reads as an empty interval read again as a tuple.
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
    # Math-Verify's timeouts use SIGALRM, which only works in the main thread; 5 s is its default.
    return 5 if threading.current_thread() is threading.main_thread() else None


def mv_parse(text: str) -> list:
    """Math-Verify's parse() with the official extraction settings."""
    from math_verify import parse

    return parse(text, extraction_config=_extraction_config(), parsing_timeout=_timeout())


def mv_verify(gold, pred) -> bool:
    """Math-Verify's verify() on two parsed answers (gold first: the comparison is asymmetric)."""
    from math_verify import verify

    return bool(verify(gold, pred, timeout_seconds=_timeout()))


def extended_parse(text: str) -> list:
    """The official extended parse of an output or gold answer (a fresh list; parses are cached)."""
    return list(_extended_parse(text))


@functools.lru_cache(maxsize=4096)
def _extended_parse(text: str) -> tuple:
    # Cached by text: a gold answer is parsed once per problem, not once per fallback.
    from latex2sympy2_extended.sets import FiniteSet as L2SFiniteSet
    from sympy import Eq, FiniteSet

    text = N.prepare_for_parse(text)
    variants = N.expand_plus_minus(text)
    if len(variants) == 1:
        parsed = mv_parse(text)
        if _spurious_empty_set(parsed, text):
            as_tuple = reparse_as_tuple(text)
            if as_tuple is not None:
                return tuple(as_tuple)
        return tuple(parsed)
    values, equations = set(), []
    for variant in variants:
        try:
            parsed = mv_parse(variant)
            if parsed:
                value = parsed[0]
                if isinstance(value, Eq):
                    equations.append(value)
                elif hasattr(value, "__iter__") and not isinstance(value, str):
                    for v in value:
                        values.add(v)
                else:
                    values.add(value)
        except Exception:  # one sign choice that does not parse is simply left out (as officially)
            pass
    if equations and not values:
        lhs = {e.lhs for e in equations}
        if len(lhs) == 1:
            rhs = set()
            for e in equations:
                if isinstance(e.rhs, FiniteSet):
                    rhs.update(v.doit() for v in e.rhs)
                else:
                    rhs.add(e.rhs.doit())
            # x = 1 \pm 2 means x is 3 or -1: one equation with the set of both roots. Math-Verify
            # returns latex2sympy's FiniteSet, whose equality differs from sympy's: use that one.
            return (Eq(lhs.pop(), L2SFiniteSet(*rhs), evaluate=False),)
    if values:
        return (FiniteSet(*values),)
    return tuple(mv_parse(text))


def _spurious_empty_set(parsed: list, text: str) -> bool:
    """A point `(a, b)` with a > b that Math-Verify turned into an empty interval."""
    from sympy import S

    return bool(parsed) and parsed[0] is S.EmptySet and not re.search(
        r"\\(?:emptyset|varnothing|empty)\b", text)


def split_top_level_commas(s: str) -> list[str]:
    """Split at commas outside any (), {} or [] (the parts keep their spaces)."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def reparse_as_tuple(text: str) -> list | None:
    """[Tuple of the parts, inner text] for `(a, b)`, `Q(a, b)` or `\\boxed{(a, b)}`; else None."""
    from sympy import Tuple

    inner = text.strip()
    for left, right in ((r"\[", r"\]"), (r"\(", r"\)"), ("$$", "$$"), ("$", "$")):
        if inner.startswith(left) and inner.endswith(right):
            inner = inner[len(left):-len(right)].strip()
            break
    boxed = re.match(r"\\boxed\s*\{(.*)\}\s*$", inner, re.DOTALL)
    if boxed:
        inner = boxed.group(1).strip()
    call = re.match(r"[A-Za-z]+\s*\((.*)\)\s*$", inner, re.DOTALL)  # a named point Q(...)
    if call:
        inner = call.group(1).strip()
    else:
        bracketed = re.match(r"(?:\\left\s*)?[(\[]\s*(.*?)\s*(?:\\right\s*)?[)\]]\s*$", inner, re.DOTALL)
        if bracketed:
            inner = bracketed.group(1).strip()
    if "," not in inner:
        return None
    parts = split_top_level_commas(inner)
    if len(parts) < 2:
        return None
    items = []
    for part in parts:
        try:
            parsed = mv_parse(f"${part.strip()}$")
        except Exception:
            return None
        if not parsed or isinstance(parsed[0], str):
            return None
        items.append(parsed[0])
    return [Tuple(*items), inner]
