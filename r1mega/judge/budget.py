"""A CPU-time bound on comparing one pair of answers (issue: sympy bombs that stall a GRPO step).

math-verify bounds parsing and verifying by 5 s each of wall-clock time (signal.alarm, whole seconds):
a policy writing \\prod_{i=1}^{10^9} i, a 400-deep (((5))) or (x+1)^{10000} cost 4-5 s per sample.
magnitude.py screens numbers too large to build; this is the backstop for everything else: a
comparison that spends more than SECONDS of the process's CPU time, user and system (ITIMER_PROF: a
timer of its own, untouched by math-verify's SIGALRM, and counting CPU, not wall-clock time, so a
loaded machine does not turn a right answer wrong) is abandoned as "not equal". The slowest right
answers measured take ~0.19 s (\\sin^2 x + \\cos^2 x against 1; (x+1)^5 expanded: 0.14 s). A whole
response (its answers compared with each other, then with the reference) gets RESPONSE_SECONDS, so
several slow boxes cost it once. Only the main thread can take signals; elsewhere the comparison runs
unbounded but for math-verify's own timeouts.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

SECONDS = 0.3  # one comparison: a benchmark answer takes milliseconds; a bomb is cut here
RESPONSE_SECONDS = 0.35  # one response's whole judgement (its answers agreeing, then the reference)
_REPEAT = 0.05  # the timer fires again while something swallows the first signal


class OverBudget(BaseException):
    """Raised inside math-verify/sympy when the budget is spent (a BaseException: their
    `except Exception` handlers must not swallow it)."""


def active() -> bool:
    """Is a budget running (an outer judgement's)?"""
    return signal.getitimer(signal.ITIMER_PROF)[0] > 0


def _raise(signum, frame):
    raise OverBudget


@contextmanager
def bounded(seconds: Optional[float] = None) -> Iterator[None]:
    """Run the body under a CPU-time budget; OverBudget when it is spent (main thread only; nested
    calls run under the outer budget)."""
    if threading.current_thread() is not threading.main_thread() or active():
        yield
        return
    previous = signal.signal(signal.SIGPROF, _raise)
    signal.setitimer(signal.ITIMER_PROF, SECONDS if seconds is None else seconds, _REPEAT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, previous)
