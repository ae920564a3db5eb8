"""LaTeX brace matching in linear time: a brace after an odd run of backslashes (\\{, \\}) is text,
not grouping; and where a box's brace opens (answers.py reads the last box with them, hedges.py every box)."""
from __future__ import annotations

import re

# a box's opening brace: whitespace may come first, as LaTeX allows (\boxed {x})
BOX_BRACE = re.compile(r"\s*\{")


def closing_brace(text: str, start: int, end: int) -> int:
    """Index of the "}" that closes the "{" just before `start`, searching text[start:end]; -1 if none.
    Steps from "}" to "}" and counts the "{" between them with str.count (C speed). A brace after an
    odd run of backslashes (\\{, \\}) is text, not grouping: \\left\\{ ... \\right. does not keep a box open."""
    depth, at = 1, start
    while True:
        close = text.find("}", at, end)
        if close < 0:
            return -1
        depth += _grouping(text, at, close, "{")
        if not _escaped(text, close):
            depth -= 1
            if depth == 0:
                return close
        at = close + 1


_MAX_ESCAPES = 16  # a longer run of backslashes before a brace is read as this long (LaTeX has no use for one)


def _grouping(text: str, lo: int, hi: int, brace: str) -> int:
    """How many of text[lo:hi]'s `brace` are not escaped (not after an odd run of backslashes; text[lo - 1]
    is no backslash). A brace after r backslashes is in the count of k backslashes + brace for every
    k <= r, so the alternating sum of those counts keeps exactly the ones after an even run."""
    n, sign, pattern = text.count(brace, lo, hi), -1, "\\" + brace
    while len(pattern) <= _MAX_ESCAPES + 1 and text.find(pattern, lo, hi) >= 0:
        n += sign * text.count(pattern, lo, hi)
        sign, pattern = -sign, "\\" + pattern
    return n


def _escaped(text: str, at: int) -> bool:
    """Whether text[at] follows an odd run of backslashes."""
    run = 0
    while run < _MAX_ESCAPES and at > run and text[at - run - 1] == "\\":
        run += 1
    return run % 2 == 1
