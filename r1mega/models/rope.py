"""Rotary embedding (DeepSeek's decoupled MLA key, the students' full heads) and its scalings.

Llama 3 scaling divides the low frequencies by `factor` and blends the middle band smoothly
between `low_freq_factor` and `high_freq_factor` wavelengths of the original context.
YaRN blends interpolated and extrapolated frequencies with a linear ramp between the correction
dims of beta_fast/beta_slow, scales cos/sin by mscale(factor, mscale)/mscale(factor, mscale_all_dim),
and the attention softmax scale by mscale(factor, mscale_all_dim)^2 (see `softmax_scale`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _rope_kind(scaling: Optional[dict]) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def inv_freq_and_mscale(dim: int, theta: float, scaling: Optional[dict],
                        max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    base = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    kind = _rope_kind(scaling)
    if kind == "default":
        return 1.0 / base, 1.0
    if kind == "linear":
        return 1.0 / (base * scaling["factor"]), 1.0
    if kind == "llama3":
        return llama3_inv_freq(1.0 / base, scaling), 1.0
    if kind != "yarn":
        raise ValueError(f"rope_scaling: unsupported rope type {kind!r} (default, linear, llama3 or yarn)")
    factor = scaling.get("factor")
    original = scaling["original_max_position_embeddings"]
    if factor is None:
        factor = max_position_embeddings / original
    m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if scaling.get("attention_factor") is not None:
        attn_factor = float(scaling["attention_factor"])
    elif m and m_all:
        attn_factor = yarn_mscale(factor, m) / yarn_mscale(factor, m_all)
    else:
        attn_factor = yarn_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp
    inv = (1.0 / (factor * base)) * (1 - extrapolate) + (1.0 / base) * extrapolate
    return inv, attn_factor


def llama3_inv_freq(inv: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > original / low, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    middle = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(middle, blended, scaled)


def softmax_scale(qk_head_dim: int, scaling: Optional[dict]) -> float:
    scale = qk_head_dim ** -0.5
    if _rope_kind(scaling) != "default" and scaling.get("mscale_all_dim"):
        m = yarn_mscale(scaling["factor"], scaling["mscale_all_dim"])
        scale = scale * m * m
    return scale


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, dim: int, theta: float, scaling: Optional[dict], max_position_embeddings: int,
                 interleave: bool):
        super().__init__()
        inv, self.attn_factor = inv_freq_and_mscale(dim, theta, scaling, max_position_embeddings)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.interleave = interleave

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [s] or [s, b] -> cos, sin [s, (b,) dim/2] (float32)."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.to(positions.device)
        return freqs.cos() * self.attn_factor, freqs.sin() * self.attn_factor

    _shaped: Optional[tuple] = None  # (cos, sin, dtype, broadcast cos, broadcast sin) of the last forward

    def _broadcast_factors(self, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype):
        compiling = torch.compiler.is_compiling()  # a graph shares them itself (state kept here is guarded on)
        last = None if compiling else self._shaped
        if last is None or last[0] is not cos or last[1] is not sin or last[2] != dtype:
            c, s_ = (cos[:, None], sin[:, None]) if cos.dim() == 2 else (cos, sin)
            last = (cos, sin, dtype, c.unsqueeze(2).to(dtype), s_.unsqueeze(2).to(dtype))
            if not compiling:
                self._shaped = last
        return last[3], last[4]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [s, b, heads, dim], cos/sin [s, dim/2] or [s, b, dim/2] -> rotated x.

        Interleaved layout (DeepSeek's weights) rotates pairs (x0,x1),(x2,x3)... and returns them
        de-interleaved [evens | odds] like transformers does; q and k share the permutation, so
        q.k is unchanged. Otherwise the half-split (rotate_half) layout.
        """
        if self.interleave:
            a, b = x[..., 0::2], x[..., 1::2]
        else:
            a, b = x.chunk(2, dim=-1)
        if not torch.is_grad_enabled():
            # broadcast factors [s, b, 1, dim/2], shaped once per forward (every layer gets the same
            # cos/sin): decoding a token or a few is mostly per-op cost
            cos, sin = self._broadcast_factors(cos, sin, x.dtype)
        else:
            if cos.dim() == 2:  # shared positions across the batch
                cos, sin = cos[:, None], sin[:, None]
            # broadcasting a [s, b, 1, dim/2] factor over heads takes a slow strided path, forward and
            # even more so backward (~15x on CPU); a materialised factor keeps every product dense.
            # Without autograd the products are bitwise the same either way.
            cos = cos.unsqueeze(2).to(x.dtype).expand(a.shape).contiguous()
            sin = sin.unsqueeze(2).to(x.dtype).expand(a.shape).contiguous()
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
