"""The one code-fence extractor (RL code reward, `r1mega eval`, the rejection filters).

A fenced block opens with a line of three or more backticks (up to three spaces of indent) and an
optional info string, and closes at the next line of at least as many backticks with nothing else
but spaces (CommonMark's rule). A block is Python when its info string is empty or its first word
names Python: py, python, python3 (any case, with or without trailing spaces or attributes such as
```` ```python title="x.py" ````). An unclosed block is not a program (the response was cut).
One pass over the lines: linear in the text.
"""
from __future__ import annotations

from typing import Optional

from r1mega.judge.response import split

PYTHON_TAGS = frozenset({"", "py", "python", "python3"})


def _fence(line: str) -> tuple[int, str]:
    """(number of backticks, info string) when the line opens or closes a fence, else (0, "")."""
    s = line.rstrip("\r")
    body = s.lstrip(" ")
    if len(s) - len(body) > 3 or not body.startswith("```"):
        return 0, ""
    n = len(body) - len(body.lstrip("`"))
    return n, body[n:].strip()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every closed fenced block as (language tag, code), in order."""
    out, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        n, info = _fence(lines[i])
        if not n or "`" in info:  # backticks in the info string: inline code, not a fence
            i += 1
            continue
        for j in range(i + 1, len(lines)):
            m, rest = _fence(lines[j])
            if m >= n and not rest:
                out.append(((info.split() or [""])[0].lower(), "\n".join(lines[i + 1:j]) + "\n"))
                i = j + 1
                break
        else:
            return out  # unclosed: the rest of the text is inside it
    return out


def python_blocks(text: str) -> list[str]:
    return [code for tag, code in fenced_blocks(text) if tag in PYTHON_TAGS]


def final_code(text: str) -> Optional[str]:
    """The last Python block after the thought (the program a code problem is judged on)."""
    parts = split(text)
    blocks = [] if parts.over_cap else python_blocks(parts.visible)
    return blocks[-1] if blocks else None


def has_fence(text: str) -> bool:
    """Any fenced block (closed or not) -- the rejection filter's code-in-the-thought check."""
    return any(_fence(line)[0] for line in text.split("\n"))
