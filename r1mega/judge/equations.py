"""Equations in an answer: a chain of numbers must hold, and "5 = x" names x like "x = 5".

math-verify compares an equation against a plain reference by its last right-hand side, so "6 = 5",
"1 = 2 = 3 = 4 = 5" and "5 \\approx 6"-like chains matched 5 (a hedge, or a false statement a human
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
    """Does the parsed answer state an equation between numbers (no unknowns) that does not hold?"""
    import sympy

    for e in parsed[:1]:
        if isinstance(e, sympy.Basic):
            for r in _relations(e):
                if not (r.lhs.free_symbols or r.rhs.free_symbols) and not _holds(r.lhs, r.rhs):
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
