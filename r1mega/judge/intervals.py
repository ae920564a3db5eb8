"""Conditions on one unknown against intervals: "x > 5" is the set (5, \\infty).

math-verify reads a reference inequality as the interval it describes when the answer is an interval,
but not the other way round: `\\boxed{x > 5}` scored 0 against the reference `(5, \\infty)` while
`\\boxed{(5, \\infty)}` scored 1 against `x > 5`, and `2 \\le x \\le 3` scored 0 against `[2, 3]`. When one
side is an interval (or a union of them) and the other a condition on a single unknown (<, <=, >, >=,
joined by and / or), the condition is compared as the set of its real solutions. Anything else is left
to math-verify as it was: `x \\ne 5`, equations, two unknowns, conditions against numbers.
"""
from __future__ import annotations


def _is_interval_set(e) -> bool:
    import sympy

    return isinstance(e, (sympy.Interval, sympy.Union)) and all(
        isinstance(part, sympy.Interval) for part in (e.args if isinstance(e, sympy.Union) else (e,)))


def _is_condition(e) -> bool:
    """An inequality in one unknown, or an and / or of such (all in the same unknown)."""
    import sympy
    from sympy.core.relational import Relational

    def inequalities(x) -> list:
        if isinstance(x, (sympy.And, sympy.Or)):
            parts = [inequalities(a) for a in x.args]
            return [] if any(not p for p in parts) else [r for p in parts for r in p]
        if isinstance(x, Relational) and not isinstance(x, (sympy.Eq, sympy.Ne)):
            return [x]
        return []

    return bool(inequalities(e)) and len(e.free_symbols) == 1


def _solutions(e):
    """The real solutions of condition e as a set, or None (sympy could not say)."""
    try:
        return e.as_set()
    except Exception:  # sympy's solvers raise many kinds (NotImplementedError, TypeError, ...)
        return None


def conditions_as_sets(pa: tuple, pb: tuple) -> tuple[tuple, tuple]:
    """(pa, pb), math-verify's parses of two answers, with a condition on one unknown replaced by its
    solution set where the other answer is an interval or a union of intervals."""
    if not pa or not pb:
        return pa, pb
    a, b = pa[0], pb[0]
    if _is_interval_set(a) and _is_condition(b):
        s = _solutions(b)
        return (pa, (s,) + pb[1:]) if s is not None else (pa, pb)
    if _is_interval_set(b) and _is_condition(a):
        s = _solutions(a)
        return ((s,) + pa[1:], pb) if s is not None else (pa, pb)
    return pa, pb
