"""Is one model output a correct answer? The competition's rules, rebuilt on Math-Verify.

The contract (FACTS.md section 6): parse the whole output with Math-Verify, LaTeX extraction with
`boxed="all"` and units normalisation OFF (units removal would eat variables such as `ab`), an
expression extraction as fallback, the last math block wins. `evaluation_method` picks the rule:

- soft (default): Math-Verify equivalence, then the documented fallbacks, in this order:
  matrix/vector vs tuple, inequalities vs intervals, other bracket kinds, `\\log` as `\\ln`,
  vector notation, degrees vs radians, decimal rounding, decimals as fractions, bare keywords.
- strict: the sympy structures must be identical (no evaluation), then the three numeric fallbacks.
- complex: `i` is the imaginary unit; falls back to soft.
- complex-strict: complex AND strict.

Every check also retries with the output wrapped in `$$...$$` when it has no math delimiters.
`check()` returns which rule matched, so a report can show why an answer counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import normalize as N
from .fallbacks import NUMERIC_FALLBACKS, TEXT_FALLBACKS, inequality_interval, matrix_vector
from .parsing import mv_verify, parse_answer

Method = Literal["soft", "strict", "complex", "complex-strict"]
METHODS: tuple[str, ...] = ("soft", "strict", "complex", "complex-strict")


@dataclass(frozen=True)
class Verdict:
    """The result of one check: correct or not, and the rule that accepted it (None if wrong)."""

    correct: bool
    rule: str | None = None


def _safe(fn, *args) -> bool:
    try:
        return bool(fn(*args))
    except Exception:  # a fallback that cannot parse simply does not match (as officially)
        return False


def verify_soft(pred: str, gold: str) -> str | None:
    """The soft rule: the name of the first check that accepts `pred` for `gold`, else None."""
    g, p = parse_answer(gold), parse_answer(pred)
    if _safe(mv_verify, g, p):
        return "math-verify"
    for name, fn in [("matrix-vector", lambda: matrix_vector(g, p)),
                     ("inequality-interval", lambda: inequality_interval(g, p))]:
        if _safe(fn):
            return name
    for name, fn in TEXT_FALLBACKS + NUMERIC_FALLBACKS:
        if _safe(fn, pred, gold):
            return name
    return None


def verify_strict(pred: str, gold: str) -> str | None:
    """The strict rule: identical sympy structure (nothing evaluated), or a numeric fallback."""
    from sympy import srepr

    g, p = parse_answer(gold), parse_answer(pred)
    if g and p and _safe(lambda: srepr(g[0]) == srepr(p[0])):
        return "strict-structure"
    for name, fn in NUMERIC_FALLBACKS:
        if _safe(fn, pred, gold):
            return name
    return None


def _with_imaginary_unit(value):
    from sympy import I

    syms = [s for s in getattr(value, "free_symbols", ()) if str(s) == "i"]
    return value.subs(syms[0], I) if syms else value


def verify_complex(pred: str, gold: str) -> str | None:
    """The complex rule: read `i` as the imaginary unit, else fall back to soft."""
    g, p = parse_answer(gold), parse_answer(pred)
    if g and p and not isinstance(g[0], str) and not isinstance(p[0], str):
        gi, pi_ = _with_imaginary_unit(g[0]), _with_imaginary_unit(p[0])
        if _safe(mv_verify, [gi], [pi_]):
            return "complex"
        # The parser may give the same name different assumptions on each side: unify, then test.
        by_name = {str(s): s for s in getattr(pi_, "free_symbols", ())}
        unified = gi.subs({s: by_name[str(s)] for s in getattr(gi, "free_symbols", ()) if str(s) in by_name})
        if _safe(lambda: hasattr(pi_, "equals") and pi_.equals(unified) is True):
            return "complex-equals"
    return verify_soft(pred, gold)


def _verify_method(pred: str, gold: str, method: str) -> str | None:
    if method == "strict":
        return verify_strict(pred, gold)
    if method == "complex":
        return verify_complex(pred, gold)
    if method == "complex-strict":
        first = verify_complex(pred, gold)
        return first and verify_strict(pred, gold) and f"{first}+strict"
    return verify_soft(pred, gold)


def check(output: str, solution: str | list[str], method: str | None = "soft") -> Verdict:
    """Score one output against a gold solution (a string, or a list where any may match)."""
    method = method or "soft"
    if method not in METHODS:
        raise ValueError(f"unknown evaluation_method {method!r} (known: {', '.join(METHODS)})")
    output = N.clean_output(output or "")
    wrapped = None if N.has_math_delimiters(output) else N.wrap_in_math(output)
    for gold in (solution if isinstance(solution, list) else [solution]):
        gold = str(gold)
        rule = _safe_rule(output, gold, method)
        if rule:
            return Verdict(True, rule)
        if wrapped and (rule := _safe_rule(wrapped, gold, method)):
            return Verdict(True, f"wrap-in-math+{rule}")
    return Verdict(False, None)


def _safe_rule(pred: str, gold: str, method: str) -> str | None:
    try:
        return _verify_method(pred, gold, method) or None
    except Exception:  # unparseable text is a wrong answer, never a crash of the whole scoring
        return None


def extract_answer(output: str) -> tuple:
    """The parsed answer of an output, as the scorer reads it (empty tuple if none is found)."""
    output = N.clean_output(output or "")
    parsed = _safe_parse(output)
    if not parsed and not N.has_math_delimiters(output) and output.strip():
        parsed = _safe_parse(N.wrap_in_math(output))
    return parsed


def answer_key(parsed: tuple) -> str:
    """A canonical string for a parsed answer (the vote key); "" when there is no answer."""
    if not parsed:
        return ""
    value = parsed[0]
    return value.strip() if isinstance(value, str) else str(value)


def equivalent(a: tuple, b: tuple) -> bool:
    """True if two parsed answers are equal under Math-Verify (used to merge vote groups)."""
    return bool(a) and bool(b) and _safe(mv_verify, a, b)


def _safe_parse(text: str) -> tuple:
    try:
        return parse_answer(text)
    except Exception:
        return ()
