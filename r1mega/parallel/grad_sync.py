"""Gradient reductions after backward, driven by each parameter's spec (`param_spec.py`).

  TP:  replicated params with partial grads (`tp_partial`: "region" always, "stream" under SP)
  DP:  dense params summed over data-parallel ranks, expert params over expert-data-parallel ranks
  tie: copies of the embedding (MTP's under PP, a tied output head on the last stage) summed with
       the first stage's (`tied_embedding`): locally when one rank holds several, then over "embed"
Losses are normalised by the global token count, so every reduction is a plain sum.
Grads of one group are flattened into one buffer per collective (one call, not one per tensor).
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import spec_of


def _all_reduce_coalesced(grads: list[torch.Tensor], group) -> None:
    if group is None or not grads:
        return
    by_dtype = defaultdict(list)
    for g in grads:
        by_dtype[g.dtype].append(g)
    for same in by_dtype.values():
        flat = _flatten_dense_tensors(same)
        dist.all_reduce(flat, group=group)
        for g, synced in zip(same, _unflatten_dense_tensors(flat, same)):
            g.copy_(synced)


def _sum_tied(grads: list[torch.Tensor], ps: ParallelState) -> None:
    if not grads:
        return
    total = grads[0].clone()
    for g in grads[1:]:  # several chunks of one rank (virtual stages) hold copies
        total += g
    if "embed" in ps.groups:
        dist.all_reduce(total, group=ps.g("embed"))
    for g in grads:
        g.copy_(total)


@torch.no_grad()
def sync_grads(model: torch.nn.Module, ps: ParallelState, data_parallel: bool = True) -> None:
    """TP and tied-embedding reductions, then (unless a ZeRO optimizer reduce-scatters them
    itself, data_parallel=False) the DP / expert-DP sums."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # every rank must bring the same tensors to each collective
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if ps.tp > 1:
        _all_reduce_coalesced([p.grad for p in params if spec_of(p).tp_reduced(ps.sp)], ps.g("tp"))
    _sum_tied([p.grad for p in params if spec_of(p).tied_embedding], ps)
    if data_parallel:
        _all_reduce_coalesced([p.grad for p in params if not spec_of(p).is_expert], ps.g("dp"))
        _all_reduce_coalesced([p.grad for p in params if spec_of(p).is_expert], ps.g("edp"))
