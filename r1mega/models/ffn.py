"""The SwiGLU feed-forward block both model families use (DeepSeek's dense layers and shared
experts, the students' MLP): gate/up column-parallel, down row-parallel."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from r1mega.kernels import batch_invariant

from r1mega.parallel.layout import ParallelState
from r1mega.parallel.tensor_parallel import (
    ColumnParallelLinear, RowParallelLinear, enter_tp_region, leave_tp_region,
)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); residual-stream layout in and out."""

    def __init__(self, hidden: int, inner: int, ps: ParallelState, std: float):
        super().__init__()
        self.ps = ps
        self.gate_proj = ColumnParallelLinear(hidden, inner, ps, std)
        self.up_proj = ColumnParallelLinear(hidden, inner, ps, std)
        self.down_proj = RowParallelLinear(inner, hidden, ps, std)

    def forward(self, x):
        x = enter_tp_region(x, self.ps)
        act = batch_invariant.silu if batch_invariant.enabled() else F.silu
        return leave_tp_region(self.down_proj(act(self.gate_proj(x)) * self.up_proj(x)), self.ps)
