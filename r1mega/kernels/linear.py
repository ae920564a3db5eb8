"""The one seam for the engine's matrix multiplies.

Every linear layer (attention projections, dense and shared-expert FFNs) calls `linear`, and the
routed experts call `grouped_linear`. A backend object supplies both; the default one is plain
torch. Other backends (FP8 blockwise emulation, Transformer Engine) register themselves and are
switched on per run with `use_backend`, so models never name a kernel library.

Embeddings, the output head, the router, norms and the attention core do not go through here:
DeepSeek-V3 keeps them in high precision.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


class TorchBackend:
    """Plain torch: F.linear, and the routed experts as one grouped GEMM per weight."""

    name = "torch"

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def grouped_linear(self, rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """rows [N, in] grouped by expert; weight [E, out, in]; offsets [E] int32, the cumulative
        end row of each expert's group -> [N, out] (rows of expert e times weight[e]^T)."""
        return grouped_linear_loop(rows, weight, offsets)


def grouped_linear_loop(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Reference: one matmul per expert (also the fallback where no grouped GEMM exists)."""
    ends = offsets.tolist()
    outs, start = [], 0
    for e, end in enumerate(ends):
        outs.append(rows[start:end] @ weight[e].t())
        start = end
    return torch.cat(outs) if outs else rows.new_zeros(0, weight.shape[1])


_active = TorchBackend()


def active_backend():
    return _active


@contextlib.contextmanager
def use_backend(backend):
    """Run a block with `backend` supplying linear/grouped_linear; restores the previous one."""
    global _active
    previous, _active = _active, backend
    try:
        yield backend
    finally:
        _active = previous


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _active.linear(x, weight, bias)


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return _active.grouped_linear(rows, weight, offsets)
