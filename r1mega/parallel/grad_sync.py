"""Gradient reductions after backward, driven by the tags the parallel layers put on parameters.

  TP:  replicated params with partial grads (`tp_partial`: "region" always, "stream" under SP)
  DP:  dense params summed over data- and context-parallel ranks (dp_cp), expert params over
       expert-data-parallel ranks (which span cp)
  PP:  the embedding copy MTP keeps on the last stage summed with the first stage's (`tied_embedding`)
Losses are normalised by the global token count, so every reduction is a plain sum.
Grads of one group are flattened into one buffer per collective (one call, not one per tensor).
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from r1mega.parallel.layout import ParallelState


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


def tp_partial(p: torch.nn.Parameter, ps: ParallelState) -> bool:
    where = getattr(p, "tp_partial", None)
    return where == "region" or (where == "stream" and ps.sp)


@torch.no_grad()
def sync_grads(model: torch.nn.Module, ps: ParallelState, data_parallel: bool = True) -> None:
    """TP and tied-embedding reductions, then (unless a ZeRO optimizer reduce-scatters them
    itself, data_parallel=False) the DP / expert-DP sums."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # every rank must bring the same tensors to each collective
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if ps.tp > 1:
        _all_reduce_coalesced([p.grad for p in params if tp_partial(p, ps)], ps.g("tp"))
    if "embed" in ps.groups:
        _all_reduce_coalesced([p.grad for p in params if getattr(p, "tied_embedding", False)], ps.g("embed"))
    if data_parallel:
        _all_reduce_coalesced([p.grad for p in params if not getattr(p, "is_expert", False)], ps.g("dp_cp"))
        _all_reduce_coalesced([p.grad for p in params if getattr(p, "is_expert", False)], ps.g("edp"))
