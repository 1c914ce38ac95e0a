"""The fallbacks of the official scorer: ways an answer counts although Math-Verify alone says no.

Each mirrors one fallback of `math-eval`'s `main.py`, including where it swallows errors and where
it lets them through (an error that escapes ends the official answer check, see `verify.py`).
Their order lives in `verify.verify_soft` / `verify.verify_strict`.
"""
from __future__ import annotations

import re

from . import normalize as N
from .parsing import extended_parse, mv_verify


# --------------------------------------------------------------------- matrix / vector vs tuple
def _flat_vector(value) -> list | None:
    from sympy import Interval, Matrix, Tuple

    if isinstance(value, Matrix):
        return list(value) if value.cols == 1 or value.rows == 1 else None
    if isinstance(value, Tuple):
        return list(value)
    if isinstance(value, Interval):
        return [value.start, value.end]  # `(a, b)` read as an open interval: a 2-vector here
    return None


def matrix_vector(pred: list, gold: list) -> bool:
    r"""A column/row matrix equals the tuple of its entries (needs a Matrix on at least one side)."""
    from sympy import Matrix

    p, g = (pred[0] if pred else None), (gold[0] if gold else None)
    if p is None or g is None or not (isinstance(p, Matrix) or isinstance(g, Matrix)):
        return False
    pf, gf = _flat_vector(p), _flat_vector(g)
    if pf is None or gf is None or len(pf) != len(gf):
        return False
    return all(mv_verify([a], [b]) for a, b in zip(pf, gf))


# --------------------------------------------------------------------- inequalities vs intervals
def _atoms(value) -> list | None:
    """An And / chained inequality flattened into its relations; None if anything else is inside."""
    from sympy import And
    from sympy.core.relational import Relational

    if isinstance(value, Relational):
        return [value]
    if isinstance(value, And):
        out = []
        for arg in value.args:
            sub = _atoms(arg)
            if sub is None:
                return None
            out.extend(sub)
        return out
    return None


def _direction_key(rel):
    """(simplify(lhs - rhs) turned to the `> 0` side, strict?) of one inequality."""
    from sympy import LessThan, StrictGreaterThan, StrictLessThan, simplify

    diff = rel.lhs - rel.rhs
    if isinstance(rel, (StrictLessThan, LessThan)):
        diff = -diff
    return simplify(diff), isinstance(rel, (StrictLessThan, StrictGreaterThan))


def _same_inequality_atoms(g, p) -> bool:
    """Two sets of (chained) inequalities with the same atoms once normalised (multi-variable)."""
    from latex2sympy2_extended.sets import FiniteSet as L2SFiniteSet

    if not isinstance(g, L2SFiniteSet) or not isinstance(p, L2SFiniteSet):
        return False
    sides = []
    for value in (g, p):
        atoms = []
        for arg in value._unsorted_args:
            flat = _atoms(arg)
            if flat is None:
                return False
            atoms.extend(flat)
        sides.append(atoms)
    if len(sides[0]) != len(sides[1]):
        return False
    try:
        return {_direction_key(a) for a in sides[0]} == {_direction_key(a) for a in sides[1]}
    except Exception:
        return False


def _relation_interval(rel, var):
    """The interval of `var < a`, `b <= var`, ... (var alone on one side), else None."""
    from sympy import GreaterThan, Interval, LessThan, StrictGreaterThan, StrictLessThan, oo

    left, right = rel.lhs == var, rel.rhs == var
    if not left and not right:
        return None
    if isinstance(rel, StrictLessThan):
        return Interval.open(-oo, rel.rhs) if left else Interval.open(rel.lhs, oo)
    if isinstance(rel, LessThan):
        return Interval(-oo, rel.rhs) if left else Interval(rel.lhs, oo)
    if isinstance(rel, StrictGreaterThan):
        return Interval.open(rel.rhs, oo) if left else Interval.open(-oo, rel.lhs)
    if isinstance(rel, GreaterThan):
        return Interval(rel.rhs, oo) if left else Interval(-oo, rel.lhs)
    return None


def _intersect_all(sets: list):
    out = sets[0]
    for s in sets[1:]:
        out = out.intersect(s)
    return out


def _as_intervals(value) -> list | None:
    """Each case of a SET of inequalities as an interval; None unless it is such a set.

    A single inequality that is not inside a set (`x > 2`) is not converted: this is why an
    interval gold never matches an inequality prediction officially.
    """
    from latex2sympy2_extended.sets import FiniteSet as L2SFiniteSet

    if not isinstance(value, L2SFiniteSet):
        return None
    groups = []
    for arg in list(value._unsorted_args):
        atoms = _atoms(arg)
        if atoms is None:
            return None
        groups.append(atoms)
    symbols = set()
    for atoms in groups:
        for a in atoms:
            symbols |= a.free_symbols
    if len(symbols) == 1:
        try:
            return [_intersect_all([a.as_set() for a in atoms]) for atoms in groups]
        except Exception:
            pass
    common = None
    for atoms in groups:
        for a in atoms:
            common = a.free_symbols if common is None else common & a.free_symbols
    if not common:
        return None
    for var in sorted(common, key=str):
        intervals = _intervals_in(groups, var)
        if intervals is not None:
            return intervals
    return None


def _intervals_in(groups: list, var) -> list | None:
    """Each group's interval in `var`, stopping at the first relation that is not `var <op> a`."""
    intervals = []
    for atoms in groups:
        pieces = []
        for a in atoms:
            piece = _relation_interval(a, var)
            if piece is None:
                return None
            pieces.append(piece)
        intervals.append(_intersect_all(pieces))
    return intervals


def _union_and_intersection(intervals: list) -> list:
    """The sets a list of cases can mean: their union (or) and, if not empty, intersection (and)."""
    from sympy import S, Union

    out = []
    try:
        out.append(Union(*intervals))
    except Exception:
        pass
    if len(intervals) >= 2:
        try:
            both = _intersect_all(intervals)
            if both is not S.EmptySet:  # contradictory cases must not match an empty answer
                out.append(both)
        except Exception:
            pass
    elif len(intervals) == 1:
        out.append(intervals[0])
    return out


def inequality_interval(gold: list, pred: list) -> bool:
    """Sets of inequalities vs the intervals they describe (only where a side is such a SET)."""
    g, p = (gold[0] if gold else None), (pred[0] if pred else None)
    if g is not None and p is not None and _same_inequality_atoms(g, p):
        return True
    g_iv = _as_intervals(g) if g is not None else None
    p_iv = _as_intervals(p) if p is not None else None
    if g_iv is None and p_iv is None:
        return False
    for g_set in (_union_and_intersection(g_iv) if g_iv else [g]):
        for p_set in (_union_and_intersection(p_iv) if p_iv else [p]):
            try:
                if mv_verify([g_set], [p_set]):
                    return True
            except Exception:
                continue
    return False


# --------------------------------------------------------------------- text rewrites, compared again
def brackets(pred: str, gold: str, parsed_gold: list, parsed_pred: list) -> bool:
    """Other bracket kinds on the prediction, then on the gold (`[1, 2]` for the point `(1, 2)`)."""
    for variant in N.bracket_variants(N.normalize_prob_vars(pred)):
        try:
            if mv_verify(parsed_gold, extended_parse(variant)):
                return True
        except Exception:
            continue
    for variant in N.bracket_variants(N.normalize_prob_vars(gold)):
        try:
            if mv_verify(extended_parse(variant), parsed_pred):
                return True
        except Exception:
            continue
    return False


def log_as_ln(pred: str, gold: str) -> bool:
    r"""`\log x` without a base read as `\ln x` on both sides."""
    if not (N.LOG_NO_BASE.search(pred) or N.LOG_NO_BASE.search(gold)):
        return False
    p2, g2 = N.log_to_ln(pred), N.log_to_ln(gold)
    if (p2, g2) == (pred, gold):
        return False
    try:
        return mv_verify(extended_parse(g2), extended_parse(p2))
    except Exception:
        return False


def dict_answers(pred: str, gold: str, parsed_gold: list, parsed_pred: list) -> bool:
    """`{x: 1, y: 2}` read as `x = 1, y = 2` (numeric keys: just the values), on either side."""
    g_dict, p_dict = N.dict_notation(gold), N.dict_notation(pred)
    pairs = []
    if g_dict is not None:
        pairs += [(lambda c=c: extended_parse(c), lambda: parsed_pred) for c in g_dict]
    if p_dict is not None:
        pairs += [(lambda: parsed_gold, lambda c=c: extended_parse(c)) for c in p_dict]
    if g_dict is not None and p_dict is not None:
        pairs += [(lambda g=g: extended_parse(g), lambda p=p: extended_parse(p)) for g in g_dict for p in p_dict]
    for make_gold, make_pred in pairs:
        try:
            if mv_verify(make_gold(), make_pred()):
                return True
        except Exception:
            continue
    return False


def vectors(pred: str, gold: str) -> bool:
    r"""Vector notations compared alike; a vector name on one side marks the bare name on the other."""
    if not N.has_vector_notation(pred) and not N.has_vector_notation(gold):
        return False
    g, p = N.unify_vectors(gold), N.unify_vectors(pred)
    g_names, p_names = N.vector_names(g), N.vector_names(p)
    if not g_names | p_names:
        return False
    for name in sorted(g_names | p_names, key=len, reverse=True):
        bare = r"(?<!\\vec\{)(?<![A-Za-z\\])" + re.escape(name) + r"(?![A-Za-z])"
        wrapped = "\\vec{" + name + "}"
        if name in g_names:
            p = re.sub(bare, lambda m: wrapped, p)
        if name in p_names:
            g = re.sub(bare, lambda m: wrapped, g)
    try:
        return mv_verify(extended_parse(N.drop_one_letter_vectors(g)),
                         extended_parse(N.drop_one_letter_vectors(p)))
    except Exception:
        return False


def degrees_radians(pred: str, gold: str) -> bool:
    r"""An angle in degrees equals the same angle in radians (`60^\circ` = `\frac{\pi}{3}`)."""
    p_deg, g_deg = N.has_degrees(pred), N.has_degrees(gold)
    if not p_deg and not g_deg:
        return False
    try:
        if p_deg and mv_verify(extended_parse(gold), extended_parse(N.degrees_to_radians(pred))):
            return True
        if g_deg and mv_verify(extended_parse(N.degrees_to_radians(gold)), extended_parse(pred)):
            return True
    except Exception:
        pass
    return False


def _rounded_equal(a, b, places: int) -> bool:
    from latex2sympy2_extended.sets import FiniteSet as L2SFiniteSet
    from sympy import FiniteSet

    if isinstance(a, (L2SFiniteSet, FiniteSet)) and isinstance(b, (L2SFiniteSet, FiniteSet)):
        try:
            xs = sorted(float(x.evalf()) for x in a.args)
            ys = sorted(float(y.evalf()) for y in b.args)
        except (TypeError, ValueError):
            return False
        return len(xs) == len(ys) and all(round(x, places) == round(y, places) for x, y in zip(xs, ys))
    try:
        return round(float(a.evalf()), places) == round(float(b.evalf()), places)
    except (TypeError, ValueError, AttributeError):
        return False


def decimal_rounding(pred: list, gold: list) -> bool:
    """A decimal equals an exact value rounded to its number of places (0.333 = 1/3, 1.41 = √2)."""
    try:
        p, g = (pred[0] if pred else None), (gold[0] if gold else None)
        if p is None or g is None:
            return False
        # The places come from the extracted text (the parse's second item).
        p_places = N.decimal_places(str(pred[1] if len(pred) > 1 else ""))
        g_places = N.decimal_places(str(gold[1] if len(gold) > 1 else ""))
        if p_places is None and g_places is None:
            return False
        places = min(x for x in (p_places, g_places) if x is not None)
        return _rounded_equal(p, g, places)
    except Exception:
        return False


def _rewritten(rewrite, pred: str, gold: str) -> bool:
    """Rewrite both texts and compare again, if the rewrite changed anything."""
    p2, g2 = rewrite(pred), rewrite(gold)
    if p2 == pred and g2 == gold:
        return False
    try:
        parsed_p = extended_parse(p2)
        parsed_g = extended_parse(g2)
        return mv_verify(parsed_g, parsed_p)
    except Exception:
        return False


def decimal_fraction(pred: str, gold: str) -> bool:
    r"""Decimals written as exact fractions on both sides (`0.625x` = `\frac{5}{8}x`)."""
    return _rewritten(N.decimals_to_fractions, pred, gold)


def bare_keywords(pred: str, gold: str) -> bool:
    """Bare `pi`, `sqrt`, `sin`, ... written as LaTeX commands on both sides (`2pi` = `2\\pi`)."""
    return _rewritten(N.bare_keywords_to_latex, pred, gold)
