"""Is one model output a correct answer? The competition's scorer, rule by rule, in its order.

This mirrors `parse_and_verify` of the official `math-eval` tool (`src/math_eval/main.py` in the
competition repository); `tests/data/scorer_parity.jsonl` holds its verdicts on cases written for
the kit and `tests/test_eval_parity.py` asserts 100% agreement. The rules, in the order they run:

1. Every prediction: XML/HTML tags removed, then whitespace between digits.
2. For each gold answer (a list: any may match), the method's check (below) on the prediction;
   if that fails, on the prediction wrapped in `$...$` (when it has no maths delimiter); if that
   fails, on the prediction with its leading noise stripped (every character that cannot start an
   expression: anything but `$ \\ digits letters ( { [ - +`, also just inside an opening
   delimiter), and then on that wrapped in `$...$`.
3. The methods (`evaluation_method`, default soft), each on the "extended parse" of both sides
   (`parsing.extended_parse`: LaTeX clean-up, `\\pm` expansion, points read as tuples):
   - soft: Math-Verify equivalence, then the fallbacks in this order: matrix/vector vs tuple,
     sets of inequalities vs intervals, other bracket kinds (prediction, then gold), `\\log` as
     `\\ln`, dict notation `{x: 1, y: 2}`, vector notations, degrees vs radians, decimal rounding,
     decimals as fractions, bare keywords (`pi`, `sqrt`, ...).
   - strict: identical sympy structure (`srepr`), else the last three soft fallbacks.
   - complex: `i` read as the imaginary unit (Math-Verify, then sympy `equals`), else soft.
   - complex-strict: complex AND strict.
4. An error inside a check makes the answer wrong, except ValueError and NotImplementedError,
   which the official tool re-raises: its CLI then stops for the whole prediction file. The kit
   keeps scoring (the answer counts as wrong) and says so in `Verdict.official_failure`. An
   `output` that is not a string stops the official tool too (step 1 fails).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from . import fallbacks as F
from . import normalize as N
from .parsing import extended_parse, mv_verify

Method = Literal["soft", "strict", "complex", "complex-strict"]
METHODS: tuple[str, ...] = ("soft", "strict", "complex", "complex-strict")


@dataclass(frozen=True)
class Verdict:
    """One check: correct or not, the rule that accepted it, and why the official tool would stop."""

    correct: bool
    rule: str | None = None
    official_failure: str | None = None   # set where the official CLI would abort the whole file


# --------------------------------------------------------------------- the three methods
def verify_soft(pred: str, gold: str) -> str | None:
    """The soft rule: the name of the first check that accepts `pred` for `gold`, else None."""
    g = extended_parse(gold)
    p = extended_parse(pred)
    if mv_verify(g, p):
        return "math-verify"
    if F.matrix_vector(p, g):
        return "matrix-vector"
    if F.inequality_interval(g, p):
        return "inequality-interval"
    checks = [("brackets", lambda: F.brackets(pred, gold, g, p)),
              ("log-as-ln", lambda: F.log_as_ln(pred, gold)),
              ("dict-notation", lambda: F.dict_answers(pred, gold, g, p)),
              ("vectors", lambda: F.vectors(pred, gold)),
              ("degrees-radians", lambda: F.degrees_radians(pred, gold)),
              ("decimal-rounding", lambda: F.decimal_rounding(p, g)),
              ("decimal-fraction", lambda: F.decimal_fraction(pred, gold)),
              ("bare-keywords", lambda: F.bare_keywords(pred, gold))]
    for name, fn in checks:
        if fn():
            return name
    return None


def verify_strict(pred: str, gold: str) -> str | None:
    """The strict rule: identical sympy structure (nothing evaluated), or a numeric fallback."""
    from sympy import srepr

    p = extended_parse(pred)
    g = extended_parse(gold)
    try:
        if srepr(p[0]) == srepr(g[0]):
            return "strict-structure"
    except Exception:  # nothing extracted on a side: try latex2sympy on the bare texts
        try:
            from latex2sympy2_extended import latex2sympy

            if srepr(latex2sympy(pred.strip().strip("$"))) == srepr(latex2sympy(gold.strip().strip("$"))):
                return "strict-latex2sympy"
        except Exception:
            pass
    if F.decimal_rounding(p, g):
        return "decimal-rounding"
    if F.decimal_fraction(pred, gold):
        return "decimal-fraction"
    if F.bare_keywords(pred, gold):
        return "bare-keywords"
    return None


def _with_imaginary_unit(value):
    from sympy import I

    if not hasattr(value, "free_symbols"):
        return value
    found = [s for s in value.free_symbols if str(s) == "i"]
    return value.subs(found[0], I) if found else value


def verify_complex(pred: str, gold: str) -> str | None:
    """The complex rule: read `i` as the imaginary unit, else fall back to soft."""
    try:
        p = extended_parse(pred)[0]
        g = extended_parse(gold)[0]
    except Exception:  # nothing extracted: soft decides
        return verify_soft(pred, gold)
    p, g = _with_imaginary_unit(p), _with_imaginary_unit(g)
    if mv_verify([g], [p]):
        return "complex"
    try:
        # The parser may give one name different assumptions on each side: unify, then compare.
        by_name = {str(s): s for s in p.free_symbols} if hasattr(p, "free_symbols") else {}
        unified = g
        if hasattr(g, "free_symbols"):
            for s in list(g.free_symbols):
                if str(s) in by_name and s != by_name[str(s)]:
                    unified = unified.subs(s, by_name[str(s)])
        if hasattr(p, "equals") and p.equals(unified):
            return "complex-equals"
    except Exception:
        pass
    return verify_soft(pred, gold)


def verify_method(pred: str, gold: str, method: str | None) -> str | None:
    """One gold answer, one method: the accepting rule or None (ValueError for an unknown method)."""
    if method == "strict":
        return verify_strict(pred, gold)
    if method == "complex":
        return verify_complex(pred, gold)
    if method == "complex-strict":
        first = verify_complex(pred, gold)
        return first and verify_strict(pred, gold) and f"{first}+strict"
    if method == "soft" or method is None:
        return verify_soft(pred, gold)
    raise ValueError(f"Unknown evaluation method: {method}")


def with_retries(pred: str, gold: str, method: str | None) -> str | None:
    """The method on the prediction as is, wrapped in `$...$`, noise-stripped, then both."""
    rule = verify_method(pred, gold, method)
    if rule:
        return rule
    wrapped = N.ensure_math_delimiters(pred)
    if wrapped != pred and (rule := verify_method(wrapped, gold, method)):
        return f"wrap-in-math+{rule}"
    stripped = N.strip_noise_prefix(pred)
    if stripped and stripped != pred:
        if rule := verify_method(stripped, gold, method):
            return f"strip-noise+{rule}"
        wrapped_stripped = N.ensure_math_delimiters(stripped)
        if wrapped_stripped != stripped and (rule := verify_method(wrapped_stripped, gold, method)):
            return f"strip-noise+wrap-in-math+{rule}"
    return None


def check(output: Any, solution: str | list[str], method: str | None = "soft") -> Verdict:
    """Score one output against a gold solution (a string, or a list where any may match)."""
    if not isinstance(output, str):
        return Verdict(False, None, f"output is {type(output).__name__}, not a string "
                                    "(the official scorer stops with a TypeError)")
    pred = N.clean_prediction(output)
    try:
        for gold in (solution if isinstance(solution, list) else [solution]):
            rule = with_retries(pred, gold, method)
            if rule:
                return Verdict(True, rule)
        return Verdict(False, None)
    except (NotImplementedError, ValueError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        return Verdict(False, None, f"the official scorer re-raises this error and stops ({why})")
    except Exception:  # any other error: the official tool logs it and counts the answer wrong
        return Verdict(False, None)


# --------------------------------------------------------------------- what voting uses
def extract_answer(output: str) -> tuple:
    """The parsed answer of an output as the scorer first finds it (plain, wrapped, noise-stripped)."""
    if not isinstance(output, str):
        return ()
    pred = N.clean_prediction(output)
    stripped = N.strip_noise_prefix(pred)
    for text in (pred, N.ensure_math_delimiters(pred), stripped, N.ensure_math_delimiters(stripped)):
        parsed = _safe_parse(text) if text.strip() else ()
        if parsed and not isinstance(parsed[0], str):  # a bare string: Math-Verify found no maths
            return parsed
    return ()


def answer_key(parsed: tuple) -> str:
    """A canonical string for a parsed answer (the vote key); "" when there is no answer."""
    if not parsed:
        return ""
    value = parsed[0]
    return value.strip() if isinstance(value, str) else str(value)


def equivalent(a: tuple, b: tuple) -> bool:
    """True if two parsed answers are equal under Math-Verify (used to merge vote groups)."""
    try:
        return bool(a) and bool(b) and mv_verify(list(a), list(b))
    except Exception:
        return False


def _safe_parse(text: str) -> tuple:
    try:
        return tuple(extended_parse(text))
    except Exception:
        return ()
