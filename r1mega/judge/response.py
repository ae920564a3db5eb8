"""A response split into its chain of thought and the visible text after it (linear time).

    thought  the text before the last "</think>" (think tags removed); None without think tags
    visible  the text after the last "</think>", cut at any "<think>" there (an unclosed thought
             hides the rest); the whole text when it has no think tags at all (a non-reasoning
             model); "" when a thought is opened and never closed
    tagged   the response has think tags
The final answer and the code are taken from `visible` only: an answer written inside the thought
is never judged (DeepSeek-R1: the summary after the thought is the answer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from r1mega.judge.limits import MAX_RESPONSE_CHARS

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Parts:
    thought: Optional[str]
    visible: str
    tagged: bool
    over_cap: bool = False  # longer than MAX_RESPONSE_CHARS: not read at all

    def reasoning_text(self, text: str) -> str:
        """What language consistency judges: the thought, or the whole response without think tags."""
        return self.thought if self.thought is not None else text


def _untagged(s: str) -> str:
    return s.replace(OPEN, " ").replace(CLOSE, " ")


def split_thought(text: str) -> Parts:
    """The response's thought and the visible text after it (see the module docstring)."""
    if len(text) > MAX_RESPONSE_CHARS:
        return Parts(None, "", False, over_cap=True)
    close = text.rfind(CLOSE)
    if close >= 0:
        after = text[close + len(CLOSE):]
        reopened = after.find(OPEN)
        visible = after if reopened < 0 else after[:reopened]
        return Parts(_untagged(text[:close]), visible, True)
    opened = text.find(OPEN)
    if opened >= 0:  # a thought that never ends: nothing after it
        return Parts(_untagged(text[opened:]), "", True)
    return Parts(None, text, False)
