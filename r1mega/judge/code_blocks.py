"""The one code-fence extractor (RL code reward, `r1mega eval`, the rejection filters).

A fenced block opens at a run of three or more backticks followed by an optional info string on the
rest of its line (prose before the run on that line is allowed: "Here it is: ```python"), and closes
at the next line that ends with at least as many backticks (a line of only backticks, or code
directly followed by them: "print(x)```"). A block is Python when its info string is empty or its
first word names Python: py, python, python3 (any case, with or without trailing spaces or
attributes such as ```` ```python title="x.py" ````). An unclosed block is not a program (the
response was cut). One pass over the lines: linear in the text.
"""
from __future__ import annotations

from typing import Optional

from r1mega.judge.response import split_thought

PYTHON_TAGS = frozenset({"", "py", "python", "python3"})
FENCE = "```"


def _opening(line: str) -> tuple[int, str]:
    """(backticks, info string) when the line opens a fence, else (0, "")."""
    at = line.find(FENCE)
    if at < 0:
        return 0, ""
    body = line[at:]
    n = len(body) - len(body.lstrip("`"))
    info = body[n:].strip()
    return (0, "") if "`" in info else (n, info)  # backticks again: inline code on one line


def _closing(line: str, n: int) -> Optional[str]:
    """The code before the closing backticks when the line closes an n-backtick fence, else None."""
    s = line.rstrip()
    m = len(s) - len(s.rstrip("`"))
    return s[:len(s) - m] if m >= n else None


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every closed fenced block as (language tag, code), in order."""
    out, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        n, info = _opening(lines[i])
        if not n:
            i += 1
            continue
        for j in range(i + 1, len(lines)):
            last = _closing(lines[j], n)
            if last is not None:
                code = lines[i + 1:j] + ([last] if last.strip() else [])
                out.append(((info.split() or [""])[0].lower(), "\n".join(code) + "\n"))
                i = j + 1
                break
        else:
            return out  # unclosed: the rest of the text is inside it
    return out


def python_blocks(text: str) -> list[str]:
    return [code for tag, code in fenced_blocks(text) if tag in PYTHON_TAGS]


def final_code(text: str) -> Optional[str]:
    """The last Python block after the thought (the program a code problem is judged on)."""
    parts = split_thought(text)
    blocks = [] if parts.over_cap else python_blocks(parts.visible)
    return blocks[-1] if blocks else None


def has_fence(text: str) -> bool:
    """Any code fence (closed or not) -- the rejection filter's code-in-the-thought check."""
    return FENCE in text
