"""The soft rule's fallbacks: ways an answer is right although Math-Verify alone says no.

Each takes the prediction and gold (texts, or their parsed forms) and returns True on a match.
They follow the official scorer's documented fallbacks, in its order (`verify.verify_soft`).
"""
from __future__ import annotations

import re
from typing import Callable

from . import normalize as N
from .parsing import mv_verify, parse_answer


def _flat_vector(value) -> list | None:
    from sympy import Interval, MatrixBase, Tuple

    if isinstance(value, MatrixBase):
        return list(value) if 1 in value.shape else None
    if isinstance(value, Tuple):
        return list(value)
    if isinstance(value, Interval):
        return [value.start, value.end]  # `(1, 2)` read as an open interval: a 2-vector here
    return None


def matrix_vector(gold: tuple, pred: tuple) -> bool:
    """A column/row matrix equals the tuple of its entries (`\\begin{pmatrix}1\\\\2\\end{pmatrix}` = (1, 2))."""
    from sympy import MatrixBase

    if not gold or not pred or not (isinstance(gold[0], MatrixBase) or isinstance(pred[0], MatrixBase)):
        return False
    g, p = _flat_vector(gold[0]), _flat_vector(pred[0])
    return g is not None and p is not None and len(g) == len(p) and all(
        mv_verify([a], [b]) for a, b in zip(g, p))


def _relation_atoms(value) -> list | None:
    from sympy import And
    from sympy.core.relational import Relational

    if isinstance(value, Relational):
        return [value]
    if isinstance(value, And):
        atoms = [_relation_atoms(a) for a in value.args]
        return None if any(a is None for a in atoms) else [x for a in atoms for x in a]
    return None


def _relation_groups(value) -> list[list] | None:
    """A relation, an And, or a set of them, as a list of groups of atomic relations."""
    from sympy import FiniteSet

    items = getattr(value, "_unsorted_args", None) or (value.args if isinstance(value, FiniteSet) else [value])
    groups = [_relation_atoms(v) for v in items]
    return None if not groups or any(g is None for g in groups) else groups


def _atom_key(rel):
    from sympy import simplify
    from sympy.core.relational import GreaterThan, LessThan, StrictGreaterThan, StrictLessThan

    diff = rel.lhs - rel.rhs
    if isinstance(rel, (StrictLessThan, LessThan)):
        diff = -diff
    elif not isinstance(rel, (StrictGreaterThan, GreaterThan)):
        return (simplify(diff), "eq")
    return (simplify(diff), isinstance(rel, StrictGreaterThan))


def _set_candidates(groups: list[list]) -> list:
    """The sets a list of inequality cases can mean: their union (or) and intersection (and)."""
    from sympy import Intersection, S, Union

    sets = []
    for atoms in groups:
        if len({s for a in atoms for s in a.free_symbols}) != 1:
            return []
        sets.append(Intersection(*[a.as_set() for a in atoms]))
    out = [Union(*sets)]
    if len(sets) > 1:
        both = Intersection(*sets)
        if both is not S.EmptySet:  # contradictory cases must not match an empty answer
            out.append(both)
    return out


def inequality_interval(gold: tuple, pred: tuple) -> bool:
    """Inequalities equal the intervals they describe (`x<-2, 1<x` = `(-oo,-2) U (1,oo)`)."""
    if not gold or not pred:
        return False
    g_groups, p_groups = _relation_groups(gold[0]), _relation_groups(pred[0])
    if g_groups is None and p_groups is None:
        return False
    if g_groups and p_groups:
        g_atoms = [a for g in g_groups for a in g]
        p_atoms = [a for g in p_groups for a in g]
        if len(g_atoms) == len(p_atoms) and {_atom_key(a) for a in g_atoms} == {_atom_key(a) for a in p_atoms}:
            return True
    g_sets = _set_candidates(g_groups) if g_groups else [gold[0]]
    p_sets = _set_candidates(p_groups) if p_groups else [pred[0]]
    return any(mv_verify([g], [p]) for g in g_sets for p in p_sets)


def _reparsed(rewrite: Callable[[str], str]) -> Callable[[str, str], bool]:
    """A fallback that rewrites both texts and compares again, if the rewrite changed anything."""

    def check(pred: str, gold: str) -> bool:
        p2, g2 = rewrite(pred), rewrite(gold)
        return (p2, g2) != (pred, gold) and mv_verify(parse_answer(g2), parse_answer(p2))

    return check


def _brackets(pred: str, gold: str) -> bool:
    """Try the other bracket kinds on each side: a point `(1, 2)` written `[1, 2]` still counts."""
    pred_p, gold_p = N.normalize_prob_vars(pred), N.normalize_prob_vars(gold)
    g, p = parse_answer(gold), parse_answer(pred)
    return (any(mv_verify(g, parse_answer(v)) for v in N.bracket_variants(pred_p))
            or any(mv_verify(parse_answer(v), p) for v in N.bracket_variants(gold_p)))


def _vectors(pred: str, gold: str) -> bool:
    r"""Vector notations compare alike, and a vector name matches its bare name on the other side."""
    names = N.vector_names(pred) | N.vector_names(gold)
    if not names:
        return False
    p, g = N.unify_vectors(pred), N.unify_vectors(gold)
    for name in sorted(names, key=len, reverse=True):
        bare = r"(?<!\\vec\{)(?<![A-Za-z\\])" + re.escape(name) + r"(?![A-Za-z])"
        wrapped = "\\vec{" + name + "}"
        p, g = re.sub(bare, lambda m: wrapped, p), re.sub(bare, lambda m: wrapped, g)
    return mv_verify(parse_answer(g), parse_answer(p))


def _degrees(pred: str, gold: str) -> bool:
    r"""An angle in degrees equals the same angle in radians (`60^\circ` = `\frac{\pi}{3}`)."""
    if N.has_degrees(pred) and mv_verify(parse_answer(gold), parse_answer(N.degrees_to_radians(pred))):
        return True
    return N.has_degrees(gold) and mv_verify(parse_answer(N.degrees_to_radians(gold)), parse_answer(pred))


_DECIMAL_PLACES = re.compile(r"-?\d+\.(\d+)")


def _decimal_rounding(gold: tuple, pred: tuple) -> bool:
    """A decimal equals an exact value rounded to its own number of places (0.333 = 1/3)."""
    from sympy import FiniteSet

    if not gold or not pred or isinstance(gold[0], str) or isinstance(pred[0], str):
        return False
    places = [min(map(len, m)) for m in (_DECIMAL_PLACES.findall(str(x[1]) if len(x) > 1 else "")
                                         for x in (gold, pred)) if m]
    if not places:
        return False
    digits = min(places)
    try:
        if isinstance(gold[0], FiniteSet) and isinstance(pred[0], FiniteSet):
            a = sorted(float(v.evalf()) for v in gold[0].args)
            b = sorted(float(v.evalf()) for v in pred[0].args)
            return len(a) == len(b) and all(round(x, digits) == round(y, digits) for x, y in zip(a, b))
        return round(float(gold[0].evalf()), digits) == round(float(pred[0].evalf()), digits)
    except (TypeError, ValueError, AttributeError):
        return False


TEXT_FALLBACKS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("brackets", _brackets),
    ("log-as-ln", _reparsed(N.log_to_ln)),
    ("vectors", _vectors),
    ("degrees-radians", _degrees),
]
NUMERIC_FALLBACKS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("decimal-rounding", lambda p, g: _decimal_rounding(parse_answer(g), parse_answer(p))),
    ("decimal-fraction", _reparsed(N.decimals_to_fractions)),
    ("bare-keywords", _reparsed(N.bare_keywords_to_latex)),
]
