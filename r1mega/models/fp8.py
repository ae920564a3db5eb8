"""DeepSeek's FP8 weight format: float8_e4m3fn weights with a float32 `<name>_scale_inv` per
128 x 128 block (edge blocks ragged). Dequantised weight = fp8 value x scale_inv of its block."""
from __future__ import annotations

import torch

from r1mega.errors import CheckpointError

BLOCK = 128
E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn


def scale_name(weight_key: str) -> str:
    return weight_key + "_scale_inv"


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype == FP8


def _expand(scale: torch.Tensor, shape: tuple[int, int], block: int) -> torch.Tensor:
    return scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]]


def dequantize(w: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK,
               dtype: torch.dtype = torch.float32, name: str = "") -> torch.Tensor:
    """`name` (file and tensor) prefixes the CheckpointError a scale of the wrong block grid raises."""
    rows, cols = w.shape
    want = (-(-rows // block), -(-cols // block))
    if tuple(scale_inv.shape) != want:
        raise CheckpointError(f"{name + ': ' if name else ''}scale_inv shape {tuple(scale_inv.shape)} != {want} for an FP8 weight {tuple(w.shape)} "
                         f"in {block}x{block} blocks")
    return (w.float() * _expand(scale_inv.float(), (rows, cols), block)).to(dtype)


def quantize(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax scaling onto the e4m3 range: returns (fp8 weight, float32 scale_inv)."""
    rows, cols = w.shape
    pr, pc = -(-rows // block) * block, -(-cols // block) * block
    padded = torch.zeros(pr, pc, dtype=torch.float32)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(pr // block, block, pc // block, block)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (padded / _expand(scale, (pr, pc), block)).clamp(-E4M3_MAX, E4M3_MAX)
    return q[:rows, :cols].to(FP8), scale
