"""The scale at which math-verify compares two numeric answers.

math-verify's tolerances are absolute: a float equals a number when both round to the same 6 decimal
places (`float_rounding`), and two numeric expressions are equal when their difference, evaluated to 15
digits, chops to zero (`numeric_precision`). At a small scale every answer is then right: 0.0, 2-2 and
10^{-99} all equalled 6.626\\times 10^{-34}, and 0.0000001 equalled 0.0000003 -- a free accuracy reward
on any problem whose answer is tiny (physical constants, wavelengths in metres, rare probabilities).

tolerances() moves both with the smallest nonzero magnitude either answer holds (a number, an element of
a tuple, set, interval or matrix, a side of an equation): below 0.01 each factor of ten adds a decimal
place and a digit of precision, so an answer keeps the significant digits it needs at 0.01; at 0.01 and
above math-verify's defaults stand unchanged (1/3 = 0.333333, 0.5 = 1/2).
"""
from __future__ import annotations

import math
import sys
from typing import Iterator, Optional

FLOAT_ROUNDING, NUMERIC_PRECISION = 6, 15  # math-verify's defaults
_UNCHANGED_FROM = 2  # 10^-2: at this magnitude and above the defaults stand
_TINIEST = sys.float_info.min  # 2.2e-308: a smaller magnitude counts as this one (at most 306 more places)
_MAX_DEPTH = 20  # containers of containers: deeper values are not looked at
_SECONDS = 1  # evaluating one answer's values (only a contrived answer comes near it)


def _values(e, depth: int = 0) -> Iterator:
    """The numeric values an answer holds: itself, or the elements of its containers and relations."""
    import sympy

    if depth > _MAX_DEPTH:
        return
    if isinstance(e, (list, tuple)):
        items = e
    elif isinstance(e, sympy.MatrixBase):
        items = list(e)
    elif isinstance(e, sympy.Expr):
        if not e.free_symbols:
            yield e
        return
    elif isinstance(e, sympy.Basic):  # sets, intervals, tuples, relations, and/or
        items = e.args
    else:
        return
    for item in items:
        yield from _values(item, depth + 1)


def _magnitude(e) -> Optional[float]:
    """|e| as a float (a nonzero value below a double's normal range as _TINIEST); None for zero, for a value
    beyond a double's range (it sets no small scale) or one that is not a number."""
    import sympy

    value = sympy.N(e.doit(), 8)
    if not isinstance(value, sympy.Number) and not value.is_number:
        return None
    size = abs(value)
    if not isinstance(size, sympy.Number) or size.is_zero or not size.is_finite:
        return None
    as_float = float(size)
    return max(as_float, _TINIEST) if math.isfinite(as_float) else None


def smallest_magnitude(parsed: tuple) -> Optional[float]:
    """The smallest nonzero |value| of a parsed answer (None: none found or not in time)."""
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout

    @timeout(_SECONDS)
    def smallest() -> Optional[float]:
        sizes = [m for e in parsed for v in _values(e) if (m := _magnitude(v)) is not None]
        return min(sizes, default=None)

    try:
        return smallest()
    except (Exception, TimeoutException):  # noqa: BLE001 - an answer sympy cannot evaluate has no scale
        return None


def tolerances(*magnitudes: Optional[float]) -> tuple[int, int]:
    """(float_rounding, numeric_precision) for math-verify's verify() at the smallest of the scales."""
    known = [m for m in magnitudes if m is not None and math.isfinite(m)]
    if not known:
        return FLOAT_ROUNDING, NUMERIC_PRECISION
    extra = max(0, -math.floor(math.log10(max(min(known), _TINIEST))) - _UNCHANGED_FROM)
    return FLOAT_ROUNDING + extra, NUMERIC_PRECISION + extra
