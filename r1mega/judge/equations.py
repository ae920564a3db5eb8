"""Equations in an answer: a chain of numbers must hold, and "5 = x" names x like "x = 5".

math-verify compares an equation against a plain reference by its last right-hand side, so "6 = 5",
"1 = 2 = 3 = 4 = 5" and "5 = x = 6" matched 5 or 6 (a hedge, or a false statement a human
grader does not credit); "\\frac{10}{2} = 5" is true and stays right.
"""
from __future__ import annotations

_TOLERANCE = 1e-9  # relative: a chain of exact numbers that holds differs by rounding at most


def _relations(e) -> list:
    import sympy

    if isinstance(e, sympy.Eq):
        return [e]
    args = getattr(e, "_unsorted_args", None) or (e.args if isinstance(e, sympy.And) else ())
    return list(args) if args and all(isinstance(a, sympy.Eq) for a in args) else []


def _holds(lhs, rhs) -> bool:
    try:
        d, scale = complex((lhs - rhs).doit().evalf(30)), complex(lhs.doit().evalf(30))
    except (TypeError, ValueError, AttributeError, ArithmeticError):
        return False
    return abs(d) <= _TOLERANCE * max(1.0, abs(scale))


def false_chain(parsed: tuple) -> bool:
    """Does the parsed answer equate numbers (sides without unknowns, anywhere in a chain) that differ?"""
    import sympy

    for e in parsed[:1]:
        if isinstance(e, sympy.Basic):
            rels = _relations(e)
            chained = all(a.rhs == b.lhs for a, b in zip(rels, rels[1:]))  # a = b = c, not x = 1, y = 2
            for group in ([[t for r in rels for t in (r.lhs, r.rhs)]] if chained else [[r.lhs, r.rhs] for r in rels]):
                numbers = [t for t in group if not t.free_symbols]
                if any(not _holds(numbers[0], t) for t in numbers[1:]):  # "5 = x = 6" too: x cannot be both
                    return True
    return False


def solved_for_name(parsed: tuple) -> tuple:
    """"5 = x" as "x = 5" (a value equal to a lone name), so the name's value is compared."""
    import sympy

    if parsed and isinstance(parsed[0], sympy.Eq):
        e = parsed[0]
        if isinstance(e.rhs, sympy.Symbol) and not e.lhs.free_symbols:
            return (sympy.Eq(e.rhs, e.lhs, evaluate=False),) + tuple(parsed[1:])
    return parsed
