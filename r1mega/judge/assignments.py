"""Answers that name their values (a=1, b=2, c=3) against answers that do not ((1, 2, 3), \\{1, 2, 3\\}).

math-verify reads "a=1, b=2, c=3" as the set {1, 2, 3}: every ordering of the values matched it, so
"(3, 2, 1)" earned the reward for a = 1, b = 2, c = 3, and one bare answer matched both x=1, y=2 and
x=2, y=1 (a hedge over which value is whose). Here, when one side assigns values to two or more
distinct names and the other lists bare values, the bare values must be ordered (a tuple, or a pair
written like an interval) and equal the named ones taken in the names' alphabetical order
((x, y), (a, b, c), (a_1, a_2, ..., a_10)); a bare set, which cannot say which value is whose, is not equal.
Both sides named, or neither, are math-verify's to compare.
"""
from __future__ import annotations

import re
from typing import Optional

_DIGITS = re.compile(r"(\d+)")


def _name_order(name: str) -> list:
    """a_2 before a_10 (digit runs compared as numbers)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(name)]


def named_values(e) -> Optional[list]:
    """The values of an answer that assigns two or more distinct names (x=1, y=2), in the names'
    alphabetical order; None for any other answer."""
    import sympy

    if not isinstance(e, sympy.FiniteSet) or len(e.args) < 2:
        return None
    if not all(isinstance(a, sympy.Eq) and isinstance(a.lhs, sympy.Symbol) for a in e.args):
        return None
    if len({a.lhs for a in e.args}) != len(e.args):  # x=1, x=2: the solutions of one unknown, a set
        return None
    return [a.rhs for a in sorted(e.args, key=lambda a: _name_order(a.lhs.name))]


def bare_values(e) -> Optional[tuple[list, bool]]:
    """(values, ordered) of an answer listing values without names: a tuple or an interval-shaped pair
    (ordered), a set of plain values (unordered); None for any other answer."""
    import sympy

    if isinstance(e, sympy.Tuple):
        return list(e.args), True
    if isinstance(e, sympy.Interval):
        return [e.start, e.end], True
    if isinstance(e, sympy.FiniteSet) and not any(isinstance(a, (sympy.Rel, sympy.Tuple)) for a in e.args):
        return list(e.args), False
    return None


def named_against_bare(pa: tuple, pb: tuple) -> Optional[tuple]:
    """(named values, bare values) as two sympy tuples to compare in order when one parsed answer names
    its values and the other does not; () when they cannot be equal (the bare values are unordered, or
    their number differs); None when the rule does not apply."""
    import sympy

    for named_side, bare_side in ((pa, pb), (pb, pa)):
        for x in named_side:
            named = named_values(x)
            if named is None:
                continue
            for y in bare_side:
                bare = bare_values(y)
                if bare is None:
                    continue
                values, ordered = bare
                if not ordered or len(values) != len(named):
                    return ()
                return sympy.Tuple(*named), sympy.Tuple(*values)
    return None
