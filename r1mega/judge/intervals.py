"""Solved conditions on one unknown against intervals: "x > 5" is the set (5, \\infty).

math-verify reads a reference inequality as the interval it describes when the answer is an interval,
but not the other way round: `\\boxed{x > 5}` scored 0 against the reference `(5, \\infty)` while
`\\boxed{(5, \\infty)}` scored 1 against `x > 5`, and `2 \\le x \\le 3` scored 0 against `[2, 3]`. When one
side is an interval (or a union of them) and the other a *solved* condition, the unknown alone against
a real constant (<, <=, >, >=, chains, and / or of such; "x < 1 or x > 2" written in words), the
condition is compared as the set it names, built from its bounds. Nothing is solved: an unsolved condition (`x^2 - 5x + 6 < 0`, the
question's own inequality boxed back, or `\\frac{x-5}{x-5} > 0`, whose simplification loses a point)
stays what math-verify makes of it, not equal to an interval. Neither are `x \\ne 5`, equations, two
unknowns, `i` (the imaginary unit) or conditions against numbers.

Intervals in ISO 31-11 notation, the usual one in French and much of European teaching (`]5, +\\infty[`
for (5, \\infty), `[2, 3[` for [2, 3)), which math-verify does not parse at all, are rewritten with
parentheses first (`iso_notation`).
"""
from __future__ import annotations

import re
from typing import Optional

# math-verify parses "x < 1 or x > 2", "x < 1 and x > 0" and "x < 1, x > 2" alike, as a set of two
# conditions: only an answer that says "or" (and neither "and" nor a comma) is read as their union
_OR = re.compile(r"(?<![A-Za-z\\])or(?![A-Za-z])")
_AND_OR_COMMA = re.compile(r"(?<![A-Za-z\\])and(?![A-Za-z])|,")
# words math-verify drops (in \text{}, or bare) may qualify the unknown ("x > 2 \text{ for integers}"):
# an answer with any word but "or" is not read as an interval (LaTeX commands are not words)
_WORD = re.compile(r"\\[A-Za-z]+|[A-Za-z]{2,}")


_MEMBER = re.compile(r"\s*([A-Za-z])\s*\\in\s*")  # "x \in ]5, +\infty[": kept as written
# a decimal comma ("1,5") only where ";" separates the endpoints and the comma is no thousands group
_DECIMAL_COMMA = re.compile(r"(?<=\d),(?=\d(?!\d\d(?:\D|$)))")
_NOT_ENDPOINT = re.compile(r"[\[\]();]")


def _iso_interval(part: str) -> Optional[tuple[bool, str]]:
    """(written in ISO notation, the interval with parentheses) of one bracketed interval, or None.
    Plain string operations: a regular expression backtracked for seconds on long blank runs."""
    t = part.strip()
    if t.startswith("\\left"):
        t = t[len("\\left"):].lstrip()
    if len(t) < 2 or t[0] not in "[]" or t[-1] not in "[]":
        return None
    left, right, body = t[0], t[-1], t[1:-1].rstrip()
    if body.endswith("\\right"):
        body = body[:-len("\\right")]
    sep = ";" if body.count(";") == 1 else ","
    if body.count(sep) != 1:
        return None
    lo, hi = (x.strip() for x in body.split(sep))
    if sep == ";":
        lo, hi = _DECIMAL_COMMA.sub(".", lo), _DECIMAL_COMMA.sub(".", hi)
    if not lo or not hi or "," in lo or "," in hi or _NOT_ENDPOINT.search(lo + hi) or "\\right" in lo + hi:
        return None
    return left == "]" or right == "[", f"{'(' if left == ']' else '['}{lo}, {hi}{')' if right == '[' else ']'}"


def iso_notation(s: str) -> str:
    """An answer that is an interval, or a union of them (\\cup), with at least one written in ISO
    notation (a reversed bracket for an open end), with parentheses for its open ends; any other answer
    as it was. A bare comma inside an endpoint is a decimal comma only when ";" separates the endpoints
    ("]1, 2, 3[" is no interval). The caller uses it only against an interval: "(1, 3)" is also a pair,
    and math-verify matched it with {1, 3}."""
    member = _MEMBER.match(s)
    head, body = (s[:member.end()], s[member.end():]) if member else ("", s)
    pieces, iso = [], False
    for part in re.split(r"\\cup|\u222a", body):
        got = _iso_interval(part)
        if got is None:
            return s
        iso = iso or got[0]
        pieces.append(got[1])
    return head + " \\cup ".join(pieces) if iso else s


def iso_against_intervals(a: str, b: str, parse) -> tuple[str, str]:
    """(a, b) with an answer in ISO notation rewritten where the other one is an interval or a union of
    them (or ISO notation too); `parse`: the caller's math-verify parse."""
    ia, ib = iso_notation(a), iso_notation(b)
    if (ia != a) == (ib != b):  # both in ISO notation, or neither
        return ia, ib
    iso, other = (ia, b) if ia != a else (ib, a)
    parsed = parse(other)
    if not (parsed and _is_interval_set(parsed[0])):
        return a, b
    return (iso, b) if ia != a else (a, iso)


def _is_interval_set(e) -> bool:
    import sympy

    return isinstance(e, (sympy.Interval, sympy.Union)) and all(
        isinstance(part, sympy.Interval) for part in (e.args if isinstance(e, sympy.Union) else (e,)))


def _bound_set(e, x):
    """{x : e} for e the unknown x alone against a real constant, or an and / or of such; else None."""
    import sympy

    if isinstance(e, (sympy.And, sympy.Or)):
        parts = [_bound_set(a, x) for a in e.args]
        if any(p is None for p in parts):
            return None
        return sympy.Intersection(*parts) if isinstance(e, sympy.And) else sympy.Union(*parts)
    below = {sympy.StrictLessThan: True, sympy.LessThan: True, sympy.StrictGreaterThan: False,
             sympy.GreaterThan: False}.get(type(e))  # x < c, x <= c: x lies below c
    if below is None:
        return None
    strict = isinstance(e, (sympy.StrictLessThan, sympy.StrictGreaterThan))
    if e.lhs == x and not e.rhs.free_symbols:
        c = e.rhs
    elif e.rhs == x and not e.lhs.free_symbols:
        c, below = e.lhs, not below
    else:
        return None
    if c.is_extended_real is not True:
        return None
    return (sympy.Interval(-sympy.oo, c, right_open=strict) if below
            else sympy.Interval(c, sympy.oo, left_open=strict))


def _solved_set(e, text: str) -> Optional[object]:
    import sympy

    if not isinstance(e, sympy.Basic) or len(e.free_symbols) != 1:
        return None
    (x,) = e.free_symbols
    if not isinstance(x, sympy.Symbol) or x.name == "i":
        return None
    if any(not w.startswith("\\") and w.lower() != "or" for w in _WORD.findall(text)):
        return None
    if isinstance(e, sympy.FiniteSet):  # "x < 1 or x > 2" (see _OR)
        if not (_OR.search(text) and not _AND_OR_COMMA.search(text)) or len(e.args) < 2:
            return None
    try:
        return _bound_set(sympy.Or(*e.args) if isinstance(e, sympy.FiniteSet) else e, x)
    except (TypeError, ValueError):  # an endpoint sympy cannot order; a part that is no condition
        return None


def conditions_as_sets(pa: tuple, pb: tuple, a: str, b: str) -> tuple[tuple, tuple]:
    """(pa, pb), math-verify's parses of answers a and b (screened for size by the caller), with a
    solved condition on one unknown replaced by the set it names where the other answer is an interval
    or a union of intervals."""
    if not pa or not pb:
        return pa, pb
    if _is_interval_set(pa[0]):
        s = _solved_set(pb[0], b)
        return (pa, (s,) + pb[1:]) if s is not None else (pa, pb)
    if _is_interval_set(pb[0]):
        s = _solved_set(pa[0], a)
        return ((s,) + pa[1:], pb) if s is not None else (pa, pb)
    return pa, pb
