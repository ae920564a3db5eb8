"""The `parallel:` section of a run config: the layout's sizes, beside the code that builds it
(layout.py). The run config (r1mega/config.py) composes it and checks it against the world size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ParallelConfig:
    """Megatron-style explicit sizes. dp is derived from the world size when left null."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: Optional[int] = None  # expert tensor parallel; null means = tp (Megatron's default)
    dp: Optional[int] = None
    sp: bool = False  # sequence parallel (needs tp > 1 to matter)
    cp: int = 1  # context parallel: each sequence in 2*cp zigzag chunks over cp ranks
    pp_layers: Optional[list[int]] = None  # layers per stage for uneven splits; null: even split

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def sequence_divisor(self) -> int:
        """What every sequence length must be a multiple of: 2 x cp zigzag chunks (cp > 1), each
        cp rank's tokens split again over tp under SP. Validation, verify-hf, the planner and
        GRPO's row padding all ask this one rule."""
        return (2 * self.cp if self.cp > 1 else 1) * (self.tp if self.sp and self.tp > 1 else 1)

    def sequence_divisor_text(self) -> str:
        """How sequence_divisor is made up, for error messages."""
        parts = (["2 x cp"] if self.cp > 1 else []) + (["tp (sequence parallel)"] if self.sp and self.tp > 1 else [])
        return f"{' x '.join(parts)} = {self.sequence_divisor}"
