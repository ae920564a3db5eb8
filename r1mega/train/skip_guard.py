"""The guard every training loop keeps against non-finite steps: a step whose loss or gradient is
NaN/Inf leaves the weights as they were (the optimizer skips it) and is announced; after
train.max_consecutive_skips of them in a row the run stops rather than save a broken model."""
from __future__ import annotations

from r1mega.errors import TrainingError


class SkipGuard:
    def __init__(self, limit: int, log):
        self.limit, self.log, self.in_a_row = limit, log, 0

    def after_step(self, step: int, skipped: bool, skipped_so_far: int, advice: str) -> None:
        """`step`: the 1-based step just taken. The skip decision is the same on every rank (a
        global norm), so every rank stops together. advice: what the user can do, for the error."""
        if skipped:
            self.log.print(f"step {step}: non-finite loss or gradient, update skipped ({skipped_so_far} so far)")
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if self.limit and self.in_a_row >= self.limit:
            self.log.close()
            raise TrainingError(f"steps {step + 1 - self.in_a_row}..{step} all had a non-finite loss or gradient "
                                f"(train.max_consecutive_skips={self.limit}); stopped without saving. {advice}")
