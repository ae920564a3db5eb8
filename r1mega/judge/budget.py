"""A CPU-time bound on judging one response (issue: sympy bombs that stall a GRPO step).

math-verify bounds parsing and verifying by 5 s each of wall-clock time (signal.alarm, whole seconds):
a policy writing \\prod_{i=1}^{10^9} i, a 400-deep (((5))) or (x+1)^{10000} cost 2-6 s per sample.
magnitude.py screens numbers too large to build; this is the backstop for everything else: a
comparison that spends more than SECONDS of the judging thread's own CPU time is abandoned as "not
equal". The judging thread's clock (pthread_getcpuclockid), not the process's: a trainer's other threads
(intra-op pools, communication threads) burn CPU while it judges, and a process-wide timer (setitimer)
cut right answers short; and CPU, not wall-clock, time: a loaded machine does not turn a right answer
wrong. A watchdog thread reads that clock every TICK and signals (SIGPROF) the judging thread once
the budget is spent, again every REPEAT while something swallows the exception. The slowest right
answers measured take ~0.19 s (\\sin^2 x + \\cos^2 x against 1; (x+1)^5 expanded: 0.14 s). A whole
response (its answers compared with each other, then with the reference) gets RESPONSE_SECONDS, so
several slow boxes cost it once. Only the main thread can take signals; elsewhere, or without a thread
CPU clock, the comparison runs unbounded but for math-verify's own timeouts.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

# one comparison: a benchmark answer takes milliseconds, the slowest right ones measured ~0.19 s; 5x that,
# so that a slower core does not turn a right answer wrong (a wrong 0 reward teaches the policy); a bomb
# is cut here (math-verify's own limits let it run 2-6 s)
SECONDS = 1.0
RESPONSE_SECONDS = 1.2  # one response's whole judgement (its answers agreeing, then the reference)
TICK = 0.005  # how often the watchdog reads the judging thread's clock
REPEAT = 0.05  # the signal comes again while something swallows the first exception
_SIGNAL = signal.SIGPROF


class OverBudget(BaseException):
    """Raised inside math-verify/sympy when the budget is spent (a BaseException: their
    `except Exception` handlers must not swallow it)."""


class _Watchdog:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.clock: Optional[int] = None  # the main thread's CPU clock while a budget runs
        self.limit = 0.0
        self.thread: Optional[threading.Thread] = None

    def run(self) -> None:
        main = threading.main_thread().ident
        with self.cond:
            while True:
                while self.clock is None:
                    self.cond.wait()
                if time.clock_gettime(self.clock) >= self.limit:
                    self.limit += REPEAT
                    signal.pthread_kill(main, _SIGNAL)  # under the lock: never after the budget ends
                self.cond.wait(TICK)


_dog = _Watchdog()


def _after_fork() -> None:  # a forked child has no watchdog thread, and maybe a lock held at the fork
    global _dog
    _dog = _Watchdog()


os.register_at_fork(after_in_child=_after_fork)


def active() -> bool:
    """Is a budget running (an outer judgement's)?"""
    return _dog.clock is not None


def _raise(signum, frame):
    if active():
        raise OverBudget


@contextmanager
def bounded(seconds: Optional[float] = None) -> Iterator[None]:
    """Run the body under a budget of the calling thread's CPU time; OverBudget when it is spent (main
    thread only; nested calls run under the outer budget)."""
    if threading.current_thread() is not threading.main_thread() or active() or not hasattr(time, "pthread_getcpuclockid"):
        yield
        return
    clock = time.pthread_getcpuclockid(threading.main_thread().ident)
    previous = signal.signal(_SIGNAL, _raise)
    with _dog.cond:
        if _dog.thread is None:
            _dog.thread = threading.Thread(target=_dog.run, name="judge-budget", daemon=True)
            _dog.thread.start()
        _dog.clock, _dog.limit = clock, time.clock_gettime(clock) + (SECONDS if seconds is None else seconds)
        _dog.cond.notify()
    try:
        yield
    finally:
        with _dog.cond:
            _dog.clock = None
        signal.signal(_SIGNAL, previous)
