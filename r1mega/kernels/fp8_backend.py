"""FP8 blockwise training on the kernels seam (linear.py): the exact emulation, and backend choice.

Every GEMM of a linear layer runs on FP8-quantised operands with fp32 accumulation:

    fprop  y  = x  . W^T   x: 1 x B tiles along in,  W: B x B blocks
    dgrad  dx = dy . W     dy: 1 x B tiles along out, W: the same B x B blocks
    wgrad  dW = dy^T . x   dy and x quantised again from high precision, column-wise: B x 1 tiles
                           along the tokens (for routed experts restarting at each expert's rows)

The emulation quantises with exactly those scales (fp8_blockwise.py), dequantises to fp32 and
multiplies in fp32, so it runs on any device. Forward and dgrad are row-local: a token's result
does not depend on which other tokens share the batch. wgrad's tiles run along the tokens, so it
depends on how the tokens of a GEMM are arranged (see the README's FP8 section for layouts).

Transformer Engine (`te.Linear`/`te.GroupedLinear` with `Float8BlockScaling`, TE >= 2.3 on
Hopper) is the production kernel for the same recipe; it is not built in yet (no GPU to verify
it on), so `auto` resolves to the emulation everywhere. It would join `BACKENDS` below.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from r1mega.kernels import use_backend
from r1mega.kernels.fp8_blockwise import BlockwiseRecipe, fake_quantize, fake_quantize_segments

FP8_MODES = ("none", "blockwise")


def _rows(t: torch.Tensor, r: BlockwiseRecipe) -> torch.Tensor:
    """1 x B tiles along the last (contracted) dim."""
    return fake_quantize(t, (1, r.block), r.pow2_scales)


def _columns(t: torch.Tensor, r: BlockwiseRecipe) -> torch.Tensor:
    """B x 1 tiles down the tokens (the column-wise copy for wgrad)."""
    return fake_quantize(t, (r.block, 1), r.pow2_scales)


def _weight(w: torch.Tensor, r: BlockwiseRecipe) -> torch.Tensor:
    """B x B blocks over each [out, in] matrix (every expert of a stack separately)."""
    return fake_quantize(w, (r.block, r.block), r.pow2_scales)


class _EmulatedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recipe: BlockwiseRecipe):
        x2 = x.reshape(-1, x.shape[-1])
        y = _rows(x2, recipe) @ _weight(weight, recipe).t()
        if bias is not None:
            y = y + bias.float()
        ctx.save_for_backward(x, weight)
        ctx.recipe, ctx.has_bias, ctx.bias_dtype = recipe, bias is not None, None if bias is None else bias.dtype
        return y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        r = ctx.recipe
        dy2 = dy.reshape(-1, dy.shape[-1]).float()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (_rows(dy2, r) @ _weight(weight, r)).to(x.dtype).view_as(x)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            dw = (_columns(dy2, r).t() @ _columns(x2, r)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0).to(ctx.bias_dtype)
        return dx, dw, db, None


def _aligned(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad `dims` to multiples of 4 fp32 elements: grouped_mm wants 16-byte strides.
    Padding a contracted dim with zeros changes no sum; padded output columns are cut off."""
    pad = [0] * (2 * t.dim())
    for d in dims:
        pad[2 * (t.dim() - 1 - d) + 1] = (-t.shape[d]) % 4
    return F.pad(t, pad) if any(pad) else t


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, out_cols: int) -> torch.Tensor:
    """rows a [N, K] of each group times b [E, K, M] of its group -> [N, out_cols] in fp32."""
    a, b = _aligned(a, (1,)), _aligned(b, (1, 2))
    return F.grouped_mm(a, b, offs=offsets)[:, :out_cols]


def _grouped_wgrad(dy: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """sum over each group's rows of dy^T x: dy [N, out], x [N, in] -> [E, out, in] in fp32."""
    out, inp = dy.shape[1], x.shape[1]
    dy, x = _aligned(dy, (1,)), _aligned(x, (1,))
    return F.grouped_mm(dy.t(), x, offs=offsets)[:, :out, :inp]


class _EmulatedGroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, offsets, recipe: BlockwiseRecipe):
        wq = _weight(weight, recipe)  # [E, out, in]
        y = _grouped_mm(_rows(rows, recipe), wq.transpose(1, 2), offsets, weight.shape[1])
        ctx.save_for_backward(rows, weight, offsets)
        ctx.recipe = recipe
        return y.to(rows.dtype)

    @staticmethod
    def backward(ctx, dy):
        rows, weight, offsets = ctx.saved_tensors
        r = ctx.recipe
        dy = dy.float()
        drows = dw = None
        if ctx.needs_input_grad[0]:
            drows = _grouped_mm(_rows(dy, r), _weight(weight, r), offsets, weight.shape[2]).to(rows.dtype)
        if ctx.needs_input_grad[1]:
            dy_c = fake_quantize_segments(dy, offsets, r.block, r.pow2_scales)
            x_c = fake_quantize_segments(rows, offsets, r.block, r.pow2_scales)
            dw = _grouped_wgrad(dy_c, x_c, offsets).to(weight.dtype)
        return drows, dw, None, None


class EmulatedBlockwiseFP8:
    """The recipe on any device: quantise -> dequantise with the recipe's scales, fp32 GEMMs."""

    name = "fp8-blockwise-emulated"

    def __init__(self, recipe: BlockwiseRecipe = BlockwiseRecipe()):
        self.recipe = recipe

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _EmulatedLinear.apply(x, weight, bias, self.recipe)

    def grouped_linear(self, rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return _EmulatedGroupedLinear.apply(rows, weight, offsets.to(torch.int32), self.recipe)


BACKENDS = {"emulated": EmulatedBlockwiseFP8}  # "te" joins here once built and verified on Hopper


def transformer_engine_usable() -> bool:
    """CUDA present and Transformer Engine >= 2.3 (the first with Float8BlockScaling) importable."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("transformer_engine").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 3)


def resolve_backend_name(choice: str) -> str:
    """auto -> Transformer Engine where it is usable and built in, else the emulation."""
    if choice == "auto":
        return "te" if "te" in BACKENDS and transformer_engine_usable() else "emulated"
    if choice not in BACKENDS:
        raise ValueError(f"train.fp8_backend={choice!r}: not available in this build "
                         f"(available: auto, {', '.join(BACKENDS)}); the Transformer Engine backend "
                         "is not built in yet")
    return choice


def fp8_backend(mode: str, choice: str = "auto", block: int = 128, pow2_scales: bool = False):
    """The backend object for train.fp8 / train.fp8_backend, or None for train.fp8=none."""
    if mode == "none":
        return None
    if mode != "blockwise":
        raise ValueError(f"train.fp8={mode!r}: expected one of {FP8_MODES}")
    return BACKENDS[resolve_backend_name(choice)](BlockwiseRecipe(block, pow2_scales))


def fp8_kernels(t, log, applies_to: str = ""):
    """The backend for a run's train.fp8 settings (t: its `train:` section; None for train.fp8=none),
    announced once in the run's log. FP8 covers the GEMMs of the linears and routed experts; the
    head, router, norms and attention core stay in train.dtype. applies_to: what of the run it
    covers, when not all of it."""
    kernels = fp8_backend(t.fp8, t.fp8_backend, t.fp8_block, t.fp8_pow2_scales)
    if kernels is not None:
        log.print(f"FP8 {t.fp8} (block {t.fp8_block}{', power-of-2 scales' if t.fp8_pow2_scales else ''}) "
                  f"through the {kernels.name} backend{applies_to}")
    return kernels


def kernels_scope(kernels):
    """Run a block on `kernels` (from fp8_kernels), or on the default kernels when it is None."""
    return use_backend(kernels) if kernels is not None else contextlib.nullcontext()
