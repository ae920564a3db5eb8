"""Percentages: one rule for a percent sign on either side (issue: a reference 50\\% credited both 50
and 0.5, but 50.0 and 12.5 against 50\\% and 12.5\\% were not, as math-verify compared integers by
their digits and decimals by value).

`X\\%` against a plain N is equal when N = X (the sign left off: GSM8K and MATH write the answer to
"what percent" bare, and so do responses) or when N = X/100 (the value: a probability given as 50\\%),
whatever form the numbers take (50, 50.0, 100/2; 0.5, \\frac{1}{2}); `X\\%` against `Y\\%` when X = Y.
These are two readings of one written answer, as math-verify and the Qwen math grader allow; a response
cannot claim both at once (\\boxed{50 \\text{ or } 0.5}, two boxes with 50 and 0.5: hedges.py).
The sign is \\%, %, \\text{\\%}, "percent" or \\text{ percent} at the end of the answer.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

_PERCENT = re.compile(r"(.*?[^\s\\])\s*(?:\\?%|\\(?:text|textrm|mathrm|mbox)\s*\{\s*(?:\\?%|percent)\s*\}|(?<=\s)percent)\s*",
                      re.DOTALL | re.IGNORECASE)


def split(answer: str) -> Optional[tuple[str, bool]]:
    """(the number, True) of an answer that ends in a percent sign, else None."""
    if "%" not in answer and "ercent" not in answer.lower():
        return None
    m = _PERCENT.fullmatch(answer.strip())
    if m is None or any(c in m.group(1) for c in "=<>,;"):  # 0.5 = 50\%, (10\%, 20\%): math-verify's to read
        return None
    return m.group(1), True


def equal(a: tuple[str, bool], b: tuple[str, bool], same: Callable[[str, str], bool]) -> bool:
    """a, b: (answer without its sign, had one); same compares two answers without signs."""
    (x, pct_x), (y, pct_y) = a, b
    if pct_x and pct_y:
        return same(x, y)
    if pct_y:
        x, y = y, x
    return same(x, y) or same(f"\\frac{{{x}}}{{100}}", y)
