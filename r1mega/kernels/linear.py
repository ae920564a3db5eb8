"""The one seam for the engine's matrix multiplies.

Every linear layer (attention projections, dense and shared-expert FFNs) calls `linear`, and the
routed experts call `grouped_linear`. A backend object supplies both; the default one is plain
torch. Other backends (FP8 blockwise emulation, Transformer Engine) are chosen for a block of code
with `use_backend`, so models never name a kernel library. The choice is a context variable, not
module state: it holds for the code run inside the block (its thread or task) and nowhere else;
activation recompute re-enters the forward's choice (parallel/recompute.py).

Embeddings, the output head, the router, norms and the attention core do not go through here:
DeepSeek-V3 keeps them in high precision.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F

from r1mega.kernels import batch_invariant, cpu_experts


class TorchBackend:
    """Plain torch: F.linear, and the routed experts as one grouped GEMM per weight."""

    name = "torch"

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def grouped_linear(self, rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """rows [N, in] grouped by expert; weight [E, out, in]; offsets [E] int32, the cumulative
        end row of each expert's group (offsets[-1] == N) -> [N, out], rows of expert e times
        weight[e]^T. Empty groups are fine. No host sync on the grouped_mm path."""
        if grouped_mm_usable(rows, weight):
            if rows.shape[0] and cpu_experts.usable(rows):  # decoding on a multi-core CPU
                return cpu_experts.grouped_mm_over_cores(_aligned(rows), weight.transpose(-2, -1), offsets)
            return _GroupedLinear.apply(rows, weight, offsets)
        return grouped_linear_loop(rows, weight, offsets)


_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_usable(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    """torch's grouped_mm wants every non-unit stride a multiple of 16 bytes; both the `in` and the
    `out` dimension act as a row stride in forward or backward, so both must be aligned."""
    if not hasattr(F, "grouped_mm") or rows.dtype not in _GROUPED_MM_DTYPES or weight.dtype != rows.dtype:
        return False
    per_16_bytes = 16 // rows.element_size()
    return weight.shape[1] % per_16_bytes == 0 and weight.shape[2] % per_16_bytes == 0


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Row-major with a 16-byte aligned start (views with odd offsets are copied)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


class _GroupedLinear(torch.autograd.Function):
    """y = rows @ weight[e]^T per group through F.grouped_mm, with a backward that also runs as
    two grouped GEMMs: d_rows = dy @ weight[e], d_weight[e] = dy_e^T @ rows_e. Written out (rather
    than relying on grouped_mm's own autograd) to make incoming gradients contiguous and aligned
    and to skip the products nobody needs."""

    @staticmethod
    def forward(ctx, rows, weight, offsets):
        rows = _aligned(rows)
        ctx.save_for_backward(rows, weight, offsets)
        if rows.shape[0] == 0:
            return rows.new_zeros(0, weight.shape[1])
        return F.grouped_mm(rows, weight.transpose(-2, -1), offs=offsets)

    @staticmethod
    def backward(ctx, grad):
        rows, weight, offsets = ctx.saved_tensors
        d_rows = d_weight = None
        if rows.shape[0] == 0:
            if ctx.needs_input_grad[0]:
                d_rows = torch.zeros_like(rows)
            if ctx.needs_input_grad[1]:
                d_weight = torch.zeros_like(weight)
            return d_rows, d_weight, None
        grad = _aligned(grad)
        if ctx.needs_input_grad[0]:
            d_rows = F.grouped_mm(grad, _aligned(weight), offs=offsets)
        if ctx.needs_input_grad[1]:
            d_weight = F.grouped_mm(grad.t(), rows, offs=offsets)
        return d_rows, d_weight, None


def grouped_linear_loop(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Reference: one matmul per expert, the fallback where grouped_mm is missing or cannot take the
    shapes. `unbind` gives every expert's slice in one autograd node, whose backward stacks the
    slices' gradients once (indexing weight[e] per expert would zero-fill a whole [E, out, in]
    gradient per expert). Reads the offsets on the host."""
    ends = offsets.tolist()
    outs, start = [], 0
    for w_e, end in zip(weight.unbind(0), ends):
        outs.append(rows[start:end] @ w_e.t())
        start = end
    return torch.cat(outs) if outs else rows.new_zeros(0, weight.shape[1])


_TORCH_BACKEND = TorchBackend()
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("r1mega_kernels", default=_TORCH_BACKEND)


def active_backend():
    if torch.compiler.is_compiling():  # the compiled decoding step runs only on the plain kernels
        return _TORCH_BACKEND  # (inference/compiled_decode.py checks; a ContextVar breaks a graph)
    return _ACTIVE.get()


@contextlib.contextmanager
def use_backend(backend):
    """Run a block with `backend` supplying linear/grouped_linear; the previous one holds again after."""
    token = _ACTIVE.set(backend)
    try:
        yield backend
    finally:
        _ACTIVE.reset(token)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if batch_invariant.enabled():  # rl.exact_rollouts (config validation keeps other backends out)
        return batch_invariant.linear(x, weight, bias)
    return active_backend().linear(x, weight, bias)


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    if batch_invariant.enabled():
        return batch_invariant.grouped_linear(rows, weight, offsets, _exact_grouped)
    return active_backend().grouped_linear(rows, weight, offsets)


def _exact_grouped(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One grouped GEMM (no spreading over cores: each expert's GEMM must see its padded rows)."""
    if grouped_mm_usable(rows, weight):
        return _GroupedLinear.apply(rows, weight, offsets)
    return grouped_linear_loop(rows, weight, offsets)
