"""Differentiable collectives (Megatron's f/g operators and friends) over an explicit group.

Every op is the identity when the group is None (size 1), so the single-process model runs the
same code. Collectives act on dim 0 (tokens / sequence, since activations are [seq, batch, ...]).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from r1mega.kernels import batch_invariant

Group = Optional[dist.ProcessGroup]

# torch 2.13 renamed the tensor collectives (*_single); older images (e.g. 2.11) have only the old names
_all_gather_base = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_base = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _size(group: Group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _rank(group: Group) -> int:
    return 0 if group is None else dist.get_rank(group)


def _all_reduce(x: torch.Tensor, group: Group) -> torch.Tensor:
    if _size(group) > 2 and batch_invariant.enabled():
        return sum_in_rank_order(x, group)
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def all_reduce_values(t: torch.Tensor, group: Group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce t in place (not differentiable) and return it; no group: t as it is. A sum over more
    than two ranks adds in rank order under rl.exact_rollouts (sum_in_rank_order)."""
    if group is not None and op == dist.ReduceOp.SUM and dist.get_world_size(group) > 2 and batch_invariant.enabled():
        return t.copy_(sum_in_rank_order(t, group))
    if group is not None:
        dist.all_reduce(t, op=op, group=group)
    return t


def sum_in_rank_order(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Every rank's x summed as ((x_0 + x_1) + x_2) + ...: the same bits for a value wherever it sits in
    the buffer (rl.exact_rollouts). A ring all-reduce of more than two ranks adds in an order that
    depends on the value's chunk, i.e. on the buffer's size; two ranks' sum is the same either way."""
    parts = all_gather_nograd(x.unsqueeze(0), group)
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def all_gather_nograd(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate every rank's x along dim 0 (not differentiable; see gather_seq/gather_dim0)."""
    x = x.contiguous()
    out = x.new_empty((x.shape[0] * _size(group),) + tuple(x.shape[1:]))
    _all_gather_base(out, x, group=group)
    return out


def reduce_scatter_nograd(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Sum over ranks and keep this rank's 1/n of dim 0 (not differentiable)."""
    n = _size(group)
    if x.shape[0] % n:
        raise ValueError(f"reduce-scatter: dim 0 of shape {tuple(x.shape)} is not divisible by group size {n}")
    if n > 2 and batch_invariant.enabled():
        return sum_in_rank_order(x, group).chunk(n)[_rank(group)].contiguous()
    x = x.contiguous()
    out = x.new_empty((x.shape[0] // n,) + tuple(x.shape[1:]))
    _reduce_scatter_base(out, x, group=group)
    return out


def _split(x: torch.Tensor, group: Group) -> torch.Tensor:
    n = _size(group)
    if x.shape[0] % n:
        raise ValueError(f"split: dim 0 of shape {tuple(x.shape)} is not divisible by group size {n}")
    return x.chunk(n, dim=0)[_rank(group)].contiguous()


class _CopyToGroup(torch.autograd.Function):
    """Enter a TP region with a replicated input: forward identity, backward all-reduce."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g, ctx.group), None


class _ReduceFromGroup(torch.autograd.Function):
    """Leave a TP region to a replicated output: forward all-reduce, backward identity."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherReduceScatter(torch.autograd.Function):
    """Enter a TP region from sequence shards: forward all-gather, backward reduce-scatter."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_nograd(x, group)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter_nograd(g, ctx.group), None


class _ReduceScatterGather(torch.autograd.Function):
    """Leave a TP region to sequence shards: forward reduce-scatter, backward all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter_nograd(x, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather_nograd(g, ctx.group), None


class _SplitGather(torch.autograd.Function):
    """Take this rank's chunk of a replicated tensor: forward split, backward all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather_nograd(g, ctx.group), None


class _GatherSplit(torch.autograd.Function):
    """Reassemble chunks into a replicated tensor: forward all-gather, backward split."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_nograd(x, group)

    @staticmethod
    def backward(ctx, g):
        return _split(g, ctx.group), None


def copy_to_group(x, group: Group):
    return x if group is None else _CopyToGroup.apply(x, group)


def reduce_from_group(x, group: Group):
    return x if group is None else _ReduceFromGroup.apply(x, group)


def gather_seq(x, group: Group):
    return x if group is None else _GatherReduceScatter.apply(x, group)


def reduce_scatter_seq(x, group: Group):
    return x if group is None else _ReduceScatterGather.apply(x, group)


def split_dim0(x, group: Group):
    return x if group is None else _SplitGather.apply(x, group)


def gather_dim0(x, group: Group):
    return x if group is None else _GatherSplit.apply(x, group)


# ---- uneven token exchanges for the expert dispatcher ---------------------------------------

def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Group) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x, output_split_sizes=out_splits, input_split_sizes=in_splits, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _all_to_all(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, g):
        out_splits, in_splits = ctx.splits
        return _all_to_all(g, in_splits, out_splits, ctx.group), None, None, None


def all_to_all(x, out_splits: list[int], in_splits: list[int], group: Group):
    """Send rows x[sum(in_splits[:j]) : ...] to rank j; receive out_splits[j] rows from rank j."""
    return x if group is None else _AllToAll.apply(x, out_splits, in_splits, group)


def _gather_uneven(x: torch.Tensor, sizes: list[int], group: Group) -> torch.Tensor:
    # gloo has no uneven all-gather: pad every rank's rows to the largest, then unpad
    width = max(sizes)
    padded = x.new_zeros((width,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    full = all_gather_nograd(padded, group)
    return torch.cat([full[i * width: i * width + n] for i, n in enumerate(sizes)])


def _reduce_scatter_uneven(x: torch.Tensor, sizes: list[int], group: Group) -> torch.Tensor:
    width = max(sizes)
    padded = x.new_zeros((width * len(sizes),) + tuple(x.shape[1:]))
    offset = 0
    for i, n in enumerate(sizes):
        padded[i * width: i * width + n] = x[offset: offset + n]
        offset += n
    return reduce_scatter_nograd(padded, group)[: sizes[_rank(group)]]


class _GatherUneven(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        return _gather_uneven(x, sizes, group)

    @staticmethod
    def backward(ctx, g):
        return _reduce_scatter_uneven(g, ctx.sizes, ctx.group), None, None


class _ReduceScatterUneven(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        return _reduce_scatter_uneven(x, sizes, group)

    @staticmethod
    def backward(ctx, g):
        return _gather_uneven(g, ctx.sizes, ctx.group), None, None


def gather_uneven(x, sizes: list[int], group: Group):
    """All-gather rows where rank i holds sizes[i] rows; backward reduce-scatters."""
    return x if group is None else _GatherUneven.apply(x, sizes, group)


def reduce_scatter_uneven(x, sizes: list[int], group: Group):
    """Sum over ranks, then keep this rank's sizes[rank] rows; backward all-gathers."""
    return x if group is None else _ReduceScatterUneven.apply(x, sizes, group)


def all_gather_sizes(n: int, group: Group, device: torch.device) -> list[int]:
    if group is None:
        return [n]
    return all_gather_nograd(torch.tensor([n], dtype=torch.long, device=device), group).tolist()
