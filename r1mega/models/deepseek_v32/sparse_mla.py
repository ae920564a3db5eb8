"""MLA over each query's selected tokens, in its MQA form over the latent (training and prefill).

kv_b_proj is absorbed: per head q_lat = q_nope W_uk [r], scores = [q_lat | q_rope] . [c | k_rope]
of the selected tokens, out = (softmax . c) W_uv. Every head of a query reads the same k latents,
gathered once per query: O(s k) work, never s x s. Queries go by blocks whose gathered latents
[b, block, k, r + rope] are the largest transient; with gradients each block is recomputed in
backward (checkpoint), so no block's gathered latents are kept: activation memory is the
absorbed queries and the output, O(s) per head. (DeepSeek's kernel reads the selected rows in
place; this plain-torch form is the reference and runs everywhere.)
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

GATHER_BUDGET = 1 << 26  # elements of one block's gathered latents or [b, block, heads, k] scores


def gather_selected(latent: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """latent [b, s_k, R], sel [b, s, k] -> [b, s, k, R]."""
    b = latent.shape[0]
    return latent[torch.arange(b, device=latent.device)[:, None, None], sel]


def absorbed_queries(q_nope: torch.Tensor, q_rope: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """q_nope [s, b, h, d_nope], q_rope [s, b, h, rope], w_uk [h, d_nope, r] -> [b, s, h, r + rope]."""
    q_lat = torch.einsum("sbhd,hdr->bshr", q_nope, w_uk)
    return torch.cat([q_lat, q_rope.transpose(0, 1)], -1)


def _attend_block(query, latent, sel, valid, scale: float, r: int) -> torch.Tensor:
    """query [b, n, h, R], latent [b, s_k, R], sel/valid [b, n, k] -> latent context [b, n, h, r]."""
    picked = gather_selected(latent, sel)
    logits = torch.einsum("bnhc,bnkc->bnhk", query, picked).float() * scale
    probs = logits.masked_fill(~valid[:, :, None, :], float("-inf")).softmax(-1).to(query.dtype)
    return torch.einsum("bnhk,bnkr->bnhr", probs, picked[..., :r])


def sparse_mla(q_nope, q_rope, c, k_rope, sel, valid, kv_b_weight, nope_dim: int, v_dim: int,
               scale: float) -> torch.Tensor:
    """q_nope/q_rope [s, b, h, *] (this rank's heads), c [s_k, b, r], k_rope [s_k, b, rope], sel/valid
    [b, s, k], kv_b_weight [h * (nope + v), r] -> attention output [s, b, h * v]."""
    s, b, h = q_nope.shape[:3]
    r, k = c.shape[-1], sel.shape[-1]
    w = kv_b_weight.view(h, nope_dim + v_dim, r)
    w_uk, w_uv = w[:, :nope_dim], w[:, nope_dim:]
    query = absorbed_queries(q_nope, q_rope, w_uk)
    latent = torch.cat([c, k_rope], -1).transpose(0, 1)  # [b, s_k, r + rope]
    block = max(1, min(s, GATHER_BUDGET // (b * k * max(latent.shape[-1], h))))
    grad = torch.is_grad_enabled() and (query.requires_grad or latent.requires_grad)
    ctx = []
    for lo in range(0, s, block):
        args = (query[:, lo:lo + block], latent, sel[:, lo:lo + block], valid[:, lo:lo + block], scale, r)
        ctx.append(checkpoint(_attend_block, *args, use_reentrant=False) if grad else _attend_block(*args))
    ctx = torch.cat(ctx, 1) if len(ctx) > 1 else ctx[0]
    return torch.einsum("bshr,hvr->sbhv", ctx, w_uv).reshape(s, b, h * v_dim)
