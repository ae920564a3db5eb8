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
    def sequence_multiple(self) -> int:
        """What every sequence length must divide by: 2 x cp zigzag chunks, each split over tp
        under sequence parallelism (1 without context parallelism)."""
        return 2 * self.cp * (self.tp if self.sp and self.tp > 1 else 1) if self.cp > 1 else 1
