"""The lightning indexer of DeepSeek Sparse Attention and its top-k token selection.

    q_in (the normalised query latent) ──wq_b──> q [s, b, heads, d]   (rotary on the first rope dims)
    x ──wk──LayerNorm──> k [s, b, d]   (one key per token, shared by the heads; rotary likewise)
    x ──weights_proj──> w [s, b, heads] x heads^-0.5
    I(t, u) = sum_j w(t, j) relu(d^-0.5 q(t, j) . k(u))

The rotary is the half-split (rotate_half) layout, unlike MLA's interleaved one, as in the
released checkpoint and transformers. DeepSeek's kernel Hadamard-rotates q and k and scores in FP8;
the rotation is orthogonal (q.k unchanged), so in float it is left out, as transformers does.
Every TP rank holds the whole indexer and scores all heads (the selection must agree across
ranks; scoring split by heads would need an all-reduce of s x s scores). Its gradient comes only
from the indexer loss (index_loss.py), which each TP rank scales by 1/tp, so every indexer tensor
is tagged `tp_partial="region"`.

Selection runs by blocks of queries: a block's [b, block, keys] scores are the largest transient,
never s x s for the whole sequence, and only top-k indices [b, s, k] are kept.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1mega.parallel.param_spec import tag
from r1mega.parallel.tensor_parallel import ReplicatedLinear

SCORE_BUDGET = 1 << 24  # elements of one block's [b, block, heads, keys] per-head scores


def half_split_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [s, b, (heads,) dim] rotated in the rotate_half layout; cos/sin [s, dim/2] or [s, b, dim/2]."""
    if cos.dim() == 2:
        cos, sin = cos[:, None], sin[:, None]
    if x.dim() == 4:
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    a, b = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias (the indexer's k_norm), replicated over TP."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = tag(nn.Parameter(torch.ones(dim)), tp_partial="region", init="ones")
        self.bias = tag(nn.Parameter(torch.zeros(dim)), tp_partial="region", init="zeros")

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Indexer(nn.Module):
    def __init__(self, cfg, std: float):
        super().__init__()
        self.heads, self.dim, self.rope_dim = cfg.index_n_heads, cfg.index_head_dim, cfg.qk_rope_head_dim
        self.topk = cfg.index_topk
        self.wq_b = ReplicatedLinear(cfg.q_lora_rank, self.heads * self.dim, "region", std)
        self.wk = ReplicatedLinear(cfg.hidden_size, self.dim, "region", std)
        self.k_norm = LayerNorm(self.dim)
        self.weights_proj = ReplicatedLinear(cfg.hidden_size, self.heads, "region", std)
        self.scale = self.dim ** -0.5

    def _rope(self, t: torch.Tensor, cos, sin) -> torch.Tensor:
        rot, rest = t.split([self.rope_dim, self.dim - self.rope_dim], -1)
        return torch.cat([half_split_rope(rot, cos, sin), rest], -1)

    def keys(self, x: torch.Tensor, cos, sin) -> torch.Tensor:
        """x [s, b, D] (whole sequence) -> rotated keys [s, b, d]."""
        return self._rope(self.k_norm(self.wk(x)), cos, sin)

    def queries(self, q_in: torch.Tensor, x: torch.Tensor, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """q_in [s, b, q_lora], x [s, b, D] -> rotated queries [s, b, heads, d] and head weights
        [s, b, heads] (float32, with the heads^-0.5 and d^-0.5 scales folded in: relu commutes with
        a positive factor)."""
        q = self.wq_b(q_in).view(*q_in.shape[:2], self.heads, self.dim)
        w = F.linear(x.float(), self.weights_proj.weight.float()) * (self.heads ** -0.5 * self.scale)
        return self._rope(q, cos, sin), w

    @staticmethod
    def scores(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q [b, n, heads, d], w [b, n, heads], k [b, m, d] -> I [b, n, m] (float32)."""
        per_head = torch.einsum("bnhd,bmd->bnhm", q.float(), k.float()).relu_()
        return torch.einsum("bnh,bnhm->bnm", w, per_head)

    @torch.no_grad()
    def select(self, q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, docs: Optional[torch.Tensor],
               topk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`topk` keys of each query among those it may attend (causal, same document).
        q [s, b, heads, d], w [s, b, heads], k [s, b, d], docs [b, s] or None; s >= topk.
        Returns indices [b, s, topk] (long) and valid [b, s, topk] (False: a query with fewer than
        topk reachable keys got filler picks, which attention must skip)."""
        s, b = q.shape[:2]
        q, w, k = q.transpose(0, 1), w.transpose(0, 1), k.transpose(0, 1)
        block = max(1, min(s, SCORE_BUDGET // max(1, b * self.heads * s)))
        idx, valid = [], []
        for lo in range(0, s, block):
            hi = min(s, lo + block)
            m = max(hi, topk)  # keys a block can reach, at least topk so every row has topk picks
            score = self.scores(q[:, lo:hi], w[:, lo:hi], k[:, :m])
            allowed = torch.arange(m, device=q.device)[None, :] <= torch.arange(lo, hi, device=q.device)[:, None]
            allowed = allowed[None]
            if docs is not None:
                allowed = allowed & (docs[:, lo:hi, None] == docs[:, None, :m])
            top, picks = top_keys(score.masked_fill(~allowed, float("-inf")), topk)
            idx.append(picks)
            valid.append(top > float("-inf"))
        return torch.cat(idx, 1), torch.cat(valid, 1)


def top_keys(score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k best keys along the last dim; equal scores go to the earlier key.
    ReLU scores tie exactly (a key no head scores above 0 gets 0 + ...), and topk's tie order depends
    on the row length, which differs between query blocks, full forwards and decoding steps; a
    stable sort picks the same keys in every one of them."""
    values, order = score.sort(dim=-1, descending=True, stable=True)
    return values[..., :k], order[..., :k]
