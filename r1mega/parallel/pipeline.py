"""Pipeline execution over microbatches: point-to-point activations between stages.

This is the plain schedule (all forwards, then all backwards, GPipe order). The schedule is
the only part that changes for 1F1B / interleaved; stages, p2p and the loss hook stay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.parallel.layout import ParallelState


@dataclass
class Microbatch:
    input_ids: torch.Tensor  # [b, s]
    labels: Optional[torch.Tensor] = None  # [b, s], -100 = ignored
    attn_mask: Optional[torch.Tensor] = None
    position_ids: Optional[torch.Tensor] = None


def activation_shape(mb: Microbatch, hidden: int, ps: ParallelState) -> tuple[int, int, int]:
    b, s = mb.input_ids.shape
    return (s // ps.tp if ps.sp else s, b, hidden)


class P2P:
    def __init__(self, ps: ParallelState, dtype: torch.dtype, device: torch.device):
        self.ps, self.dtype, self.device = ps, dtype, device
        ranks, me = ps.members.get("pp", [ps.rank]), ps.r("pp")
        self.prev = ranks[me - 1] if me > 0 else None
        self.next = ranks[me + 1] if me < len(ranks) - 1 else None

    def recv(self, shape, src: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=self.dtype, device=self.device)
        dist.recv(t, src=src)
        return t

    def send(self, t: torch.Tensor, dst: int) -> None:
        dist.send(t.detach().contiguous(), dst=dst)


def run_stage(model, mb: Microbatch, hidden: Optional[torch.Tensor]):
    return model(mb.input_ids, hidden=hidden, labels=mb.labels, attn_mask=mb.attn_mask,
                 position_ids=mb.position_ids)


def forward_backward(model, microbatches: list[Microbatch], ps: ParallelState,
                     loss_fn: Callable, forward_only: bool = False) -> list:
    """Run every microbatch through this stage. On the last stage returns loss_fn(output, mb) per
    microbatch (already backpropagated unless forward_only); elsewhere an empty list."""
    param = next(model.parameters())
    p2p = P2P(ps, param.dtype, param.device)
    inputs, outputs, results = [], [], []
    for mb in microbatches:
        x = None
        if p2p.prev is not None:
            x = p2p.recv(activation_shape(mb, model.cfg.hidden_size, ps), p2p.prev)
            x.requires_grad_(not forward_only)
        with torch.set_grad_enabled(not forward_only):
            out = run_stage(model, mb, x)
            if p2p.next is None:
                result = loss_fn(out, mb)
                results.append(result)
                outputs.append(result[0] if isinstance(result, tuple) else result)
            else:
                p2p.send(out.hidden, p2p.next)
                outputs.append(out.hidden)
        inputs.append(x)
    if forward_only:
        return results
    for x, y, mb in zip(inputs, outputs, microbatches):
        if p2p.next is None:
            y.backward()
        else:
            torch.autograd.backward(y, p2p.recv(y.shape, p2p.next))
        if p2p.prev is not None:
            p2p.send(x.grad, p2p.prev)
    return results
