"""Answers too large to evaluate (9^{9^{9}}, (10^8)!, 2^{-10^{10}}, \\prod_{i=1}^{10^9} i): an upper bound
on the number of decimal digits of every exact number a parsed expression holds, from its tree alone.

math-verify hands such an answer to sympy, which spends its whole timeout (5 s, signal-based) building
the integer; a policy writing them would stall every GRPO step by seconds per sample. No benchmark
answer comes near MAX_DIGITS, so one above it is compared as a string only (answers.py).
"""
from __future__ import annotations

import math

MAX_DIGITS = 100_000
_HUGE = float("inf")


def _digits(e) -> float:
    """Upper bound on log10 of the largest exact magnitude (a value, a numerator or a denominator)
    sympy would hold evaluating `e`; 0 for symbols and small numbers."""
    import sympy

    if e.is_Integer:
        return _log10(int(e))
    if e.is_Rational:
        return max(_log10(int(e.p)), _log10(int(e.q)))
    if e.is_Float:
        return abs(_log10(float(e))) if e else 0.0
    if e.is_Symbol or e.is_NumberSymbol:
        return 0.5  # unknown or pi, e: about 3
    if not e.args:
        return 0.0
    if isinstance(e, sympy.Pow):  # |b|^|x| has |x| log10|b| digits; a negative x puts them in a denominator
        return _times(_ten_to(_digits(e.exp)), max(_digits(e.base), 0.30103))
    if isinstance(e, (sympy.factorial, sympy.factorial2, sympy.gamma, sympy.RisingFactorial,
                      sympy.FallingFactorial)):  # n! < n^n
        n = max(_digits(a) for a in e.args)
        return _times(_ten_to(n), max(n, 1.0))
    if isinstance(e, (sympy.binomial, sympy.exp)):  # C(n, k) < 2^n; e^x
        return _times(_ten_to(max(_digits(a) for a in e.args)), 0.4343)
    if isinstance(e, sympy.Product):  # up to 10^n factors, each up to the bound: \prod_{i=1}^{10^9} i is (10^9)!
        n = max(max(_digits(lim[1]), _digits(lim[2])) for lim in e.limits)
        return _times(_ten_to(n), max(_digits(e.function), n, 1.0))
    if isinstance(e, sympy.Add):
        return max(_digits(a) for a in e.args) + 1.0
    return sum(_digits(a) for a in e.args)  # products, and functions that cannot grow faster


def _log10(n: int) -> float:
    return math.log10(abs(n)) if n else 0.0


def _ten_to(x: float) -> float:
    return _HUGE if x > 300 else math.pow(10.0, x)


def _times(a: float, b: float) -> float:
    return _HUGE if a == _HUGE else a * b


def too_large(parsed: tuple) -> bool:
    """Does any sympy expression math-verify parsed hold a number of more than MAX_DIGITS digits?"""
    import sympy

    try:
        return any(isinstance(e, sympy.Basic) and _digits(e) > MAX_DIGITS for e in parsed)
    except (RecursionError, ValueError, TypeError, OverflowError):  # an odd tree: treat it as too large
        return True
