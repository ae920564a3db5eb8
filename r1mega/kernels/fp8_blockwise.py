"""Blockwise FP8 (E4M3) quantisation: DeepSeek-V3's recipe, as Transformer Engine's
`Float8BlockScaling` does it.

A tensor is cut into tiles (1 x B along the contracted dim for activations and gradients, B x B
for weights, B = 128 by default; edge tiles are ragged). Each tile gets one fp32 scale from its
absolute maximum, TE's rule (`compute_scale_from_amax`):

    scale = 448 / amax          (IEEE fp32 division)
    amax == 0 or inf -> 1;  scale inf (tiny amax) -> largest fp32;  NaN -> 1
    power-of-2 option: keep only sign and exponent bits of the scale (round down to 2^k)
    q = e4m3(clamp(x * scale, -448, 448))   (round to nearest even)
    scale_inv = 1 / scale;  dequantised x = q * scale_inv   (what the GEMM multiplies back in)

The emulated FP8 backend (fp8_backend.py) runs GEMMs on the dequantised values in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
FP32_MAX = torch.finfo(torch.float32).max
_SIGN_AND_EXPONENT = -0x800000  # int32 0xFF800000: clears the 23 mantissa bits


@dataclass(frozen=True)
class BlockwiseRecipe:
    """block: tile length (activations/gradients 1 x block, weights block x block);
    pow2_scales: round every scale down to a power of two (TE's default, exact rescaling)."""

    block: int = 128
    pow2_scales: bool = False

    def __post_init__(self):
        if self.block < 1:
            raise ValueError(f"FP8 block size must be >= 1, got {self.block}")


def scale_from_amax(amax: torch.Tensor, pow2: bool) -> torch.Tensor:
    """fp32 quantisation scales from fp32 tile maxima (TE's rule, see the module docstring)."""
    amax = amax.float()
    scale = torch.full_like(amax, E4M3_MAX) / amax
    scale = torch.where(torch.isinf(scale), torch.full_like(scale, FP32_MAX), scale)
    scale = torch.where((amax == 0) | torch.isinf(amax) | torch.isnan(scale), torch.ones_like(scale), scale)
    if pow2:
        scale = (scale.view(torch.int32) & _SIGN_AND_EXPONENT).view(torch.float32)
    return scale


def _cast(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x * scale).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize(x: torch.Tensor, tile: tuple[int, int], pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise the last two dims of x (any leading batch dims, e.g. experts) in tiles of
    tile = (rows, cols); ragged edge tiles. Returns (q e4m3 like x, scale_inv fp32
    [..., ceil(R / rows), ceil(C / cols)])."""
    tr, tc = tile
    *batch, R, C = x.shape
    nr, nc = -(-R // tr), -(-C // tc)
    xf = x.float()
    if R % tr or C % tc:  # zeros never raise a tile's amax
        xf = torch.nn.functional.pad(xf, (0, nc * tc - C, 0, nr * tr - R))
    tiles = xf.reshape(*batch, nr, tr, nc, tc)
    scale = scale_from_amax(tiles.abs().amax(dim=(-3, -1)), pow2)  # [..., nr, nc]
    q = _cast(tiles, scale[..., :, None, :, None]).view(*batch, nr * tr, nc * tc)[..., :R, :C]
    return q, torch.ones_like(scale) / scale


def dequantize(q: torch.Tensor, scale_inv: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """fp32 values of a tensor quantised by `quantize` with the same tile."""
    tr, tc = tile
    R, C = q.shape[-2:]
    s = scale_inv.repeat_interleave(tr, dim=-2).repeat_interleave(tc, dim=-1)[..., :R, :C]
    return q.float() * s


def fake_quantize(x: torch.Tensor, tile: tuple[int, int], pow2: bool = False) -> torch.Tensor:
    """quantise -> dequantise (fp32): the values an FP8 GEMM sees."""
    q, scale_inv = quantize(x, tile, pow2)
    return dequantize(q, scale_inv, tile)


def _segment_tiles(offsets: torch.Tensor, n: int, block: int) -> tuple[torch.Tensor, int]:
    """Tile index of each of n rows when every segment (rows offsets[g-1]:offsets[g]) is cut into
    runs of `block` rows starting at its own first row; plus an upper bound on the tile count.
    Device ops only (no host sync)."""
    ends = offsets.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    rows = torch.arange(n, device=offsets.device)
    seg = torch.searchsorted(ends, rows, right=True).clamp_(max=ends.numel() - 1)
    tiles_per_seg = (ends - starts + block - 1) // block
    first_tile = torch.cumsum(tiles_per_seg, 0) - tiles_per_seg
    return first_tile[seg] + (rows - starts[seg]) // block, n // block + ends.numel() + 1


def quantize_segments(x: torch.Tensor, offsets: torch.Tensor, block: int,
                      pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column-wise quantisation of rows grouped into segments (routed experts' tokens, for the
    weight gradient): block x 1 tiles down each column, restarting at every segment. x [N, C];
    offsets [S] cumulative segment ends. Returns (q [N, C], scale_inv [tiles, C], tile of each row)."""
    n = x.shape[0]
    tile, bound = _segment_tiles(offsets, n, block)
    xf = x.float()
    amax = xf.new_zeros(bound, x.shape[1]).scatter_reduce_(0, tile[:, None].expand_as(xf), xf.abs(), "amax")
    scale = scale_from_amax(amax, pow2)
    return _cast(xf, scale[tile]), torch.ones_like(scale) / scale, tile


def fake_quantize_segments(x: torch.Tensor, offsets: torch.Tensor, block: int, pow2: bool = False) -> torch.Tensor:
    q, scale_inv, tile = quantize_segments(x, offsets, block, pow2)
    return q.float() * scale_inv[tile]
