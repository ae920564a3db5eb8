"""Rewards judged once per model replica.

The ranks of one DP slice (its TP, CP and PP ranks) hold the same responses, but judging them is
not a pure function of the text: sandboxed programs race the wall clock and each process has its
own hash seed (`print(*{"a", "b"})` prints in another order per run), and math-verify's timeouts
are wall-clock. Each rank judging for itself could give the shards of one model different rewards,
hence different advantages and gradients. So the slice's first rank (tp = cp = pp = 0) judges, and
the others receive its reward table; they run no programs at all (the sandbox load is not
multiplied by tp x cp x pp either).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from r1mega.parallel.layout import ParallelState

SLICE_GROUPS = ("pp", "cp", "tp")  # the broadcast order that carries the first rank's table to all


def judge_once(ps: ParallelState, names: list[str], n: int, judge: Callable[[], list[dict[str, float]]],
               device: torch.device) -> list[dict[str, float]]:
    """judge() -> one {reward name: value} per response, run on the slice's first rank only; every
    rank of the slice returns that rank's values."""
    names = list(dict.fromkeys(names))
    if all(ps.r(g) == 0 for g in SLICE_GROUPS):
        terms = judge()
        table = torch.tensor([[float(t[k]) for k in names] for t in terms], dtype=torch.float64,
                             device=device).reshape(n, len(names))
    else:
        table = torch.zeros(n, len(names), dtype=torch.float64, device=device)
    for g in SLICE_GROUPS:  # along pp from stage 0 (tp = cp = 0), then cp, then tp: each source already holds it
        if ps.g(g) is not None:
            dist.broadcast(table, src=ps.members[g][0], group=ps.g(g))
    return [dict(zip(names, row)) for row in table.tolist()]
