"""The strict response format DeepSeek-R1's format reward asks for (linear: counts and finds).

    <think> non-empty thought </think> then the answer, where the answer is either
      one non-empty <answer>...</answer> with nothing after it (R1-Zero's template), or
      non-empty text without answer tags (the chat style: the summary after the thought)
Leading whitespace is allowed; each think tag appears exactly once, nothing comes before the thought,
and the thought holds no answer tags (an answer hidden in the thought is not an answer). Non-empty means
something shows: a thought of zero-width spaces or Braille blanks is empty (characters.py).
"""
from __future__ import annotations

from r1mega.judge.characters import shows_something
from r1mega.judge.limits import MAX_RESPONSE_CHARS
from r1mega.judge.response import CLOSE, OPEN

A_OPEN, A_CLOSE = "<answer>", "</answer>"


def well_formed(text: str) -> bool:
    if len(text) > MAX_RESPONSE_CHARS:
        return False
    body = text.lstrip()
    if not body.startswith(OPEN) or body.count(OPEN) != 1 or body.count(CLOSE) != 1:
        return False
    close = body.find(CLOSE)
    thought, after = body[len(OPEN):close], body[close + len(CLOSE):]
    if not shows_something(thought) or A_OPEN in thought or A_CLOSE in thought:
        return False
    n_open, n_close = after.count(A_OPEN), after.count(A_CLOSE)
    if not n_open and not n_close:
        return shows_something(after)
    start, end = after.find(A_OPEN), after.find(A_CLOSE)
    return (n_open == 1 and n_close == 1 and start < end and shows_something(after[start + len(A_OPEN):end])
            and not shows_something(after[end + len(A_CLOSE):]))
