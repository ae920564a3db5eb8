"""Tensor (+sequence) parallel building blocks.

A *TP region* is the stretch between a column-parallel and a row-parallel linear where each rank
holds its own heads / FFN columns. Entering it, activations become whole on every rank
(all-gather of sequence shards under SP, plain copy otherwise); leaving it, partial sums are
reduced (reduce-scatter to sequence shards under SP, all-reduce otherwise).

Every parameter carries a typed spec (`param_spec.py`) of how it is sharded and how its gradient
must be reduced: `tp_shard_dim` (sharded over TP, no reduction), `tp_partial="region"` (replicated
but used inside a TP region, partial gradient all-reduced over TP: the router, which sees each TP
rank's own slice of the tokens; replicated GQA key/value projections), `tp_partial="stream"`
(replicated on the residual stream, e.g. norms; partial only under SP).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1mega.kernels import batch_invariant, linear
from r1mega.parallel.recompute import recomputed
from r1mega.parallel.comm import copy_to_group, gather_seq, reduce_from_group, reduce_scatter_seq
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import tag  # noqa: F401  (layers tag what they create)


def enter_tp_region(x: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    return gather_seq(x, ps.g("tp")) if ps.sp else copy_to_group(x, ps.g("tp"))


def leave_tp_region(x: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    return reduce_scatter_seq(x, ps.g("tp")) if ps.sp else reduce_from_group(x, ps.g("tp"))


def _init(weight: torch.Tensor, std: float):
    nn.init.normal_(weight, mean=0.0, std=std)


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W's output rows split over TP. Input must already be in the TP region.
    high_precision: plain F.linear, never a low-precision kernel backend (the output head)."""

    def __init__(self, in_features: int, out_features: int, ps: ParallelState, std: float = 0.02,
                 bias: bool = False, high_precision: bool = False):
        super().__init__()
        assert out_features % ps.tp == 0, (out_features, ps.tp)
        self.in_features, self.out_features = in_features, out_features
        self.high_precision = high_precision
        self.weight = tag(nn.Parameter(torch.empty(out_features // ps.tp, in_features)), tp_shard_dim=0)
        _init(self.weight, std)
        self.bias = tag(nn.Parameter(torch.zeros(out_features // ps.tp)), tp_shard_dim=0) if bias else None

    def forward(self, x):
        if self.high_precision and not batch_invariant.enabled():
            return F.linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = x W^T with W's input columns split over TP. Returns the partial sum (no bias):
    the caller leaves the TP region and then adds `bias` once."""

    def __init__(self, in_features: int, out_features: int, ps: ParallelState, std: float = 0.02,
                 bias: bool = False):
        super().__init__()
        assert in_features % ps.tp == 0, (in_features, ps.tp)
        self.in_features, self.out_features = in_features, out_features
        self.weight = tag(nn.Parameter(torch.empty(out_features, in_features // ps.tp)), tp_shard_dim=1)
        _init(self.weight, std)
        self.bias = tag(nn.Parameter(torch.zeros(out_features)), tp_partial="stream") if bias else None

    def forward(self, x):
        return linear(x, self.weight)


class ReplicatedLinear(nn.Linear):
    """A linear every TP rank holds whole; `where` says how its gradient is partial."""

    def __init__(self, in_features: int, out_features: int, where: str, std: float = 0.02,
                 bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        _init(self.weight, std)
        tag(self.weight, tp_partial=where)
        if bias:
            nn.init.zeros_(self.bias)
            tag(self.bias, tp_partial=where)

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 like the reference; `where` as for ReplicatedLinear."""

    def __init__(self, dim: int, eps: float, where: str):
        super().__init__()
        self.eps = eps
        self.weight = tag(nn.Parameter(torch.ones(dim)), tp_partial=where, init="ones")

    recompute: frozenset = frozenset()  # "layernorm": keep only the input (parallel/recompute.py)

    def forward(self, x):
        return recomputed("layernorm" in self.recompute, self._norm, x)

    def _norm(self, x):
        # one fused op (bitwise the composite x * rsqrt(mean(x^2) + eps), gradients too): a decoding
        # step of a small model is mostly per-op overhead, and it runs 4 norms a layer
        if x.dtype == torch.float32:  # (a no-op cast still costs a dispatch)
            if self.weight.dtype == torch.float32 and not torch.is_grad_enabled():  # the weight inside: bitwise
                return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # (checked, 400 shapes x 1-2 threads)
            return self.weight * F.rms_norm(x, (x.shape[-1],), None, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

