"""MLA over each query's selected tokens, in its MQA form over the latent (training and prefill).

kv_b_proj is absorbed: per head q_lat = q_nope W_uk [r], scores = [q_lat | q_rope] . [c | k_rope]
of the selected tokens, out = (softmax . c) W_uv. Every head of a query reads the same k latents,
gathered once per query: [b, s, k, r + rope], O(s k) memory and FLOPs, never s x s. Autograd
gives the backward (the gather's backward scatters into the latents of the selected tokens).
"""
from __future__ import annotations

import torch


def gather_selected(latent: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """latent [b, s_k, R], sel [b, s, k] -> [b, s, k, R]."""
    b = latent.shape[0]
    return latent[torch.arange(b, device=latent.device)[:, None, None], sel]


def absorbed_queries(q_nope: torch.Tensor, q_rope: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """q_nope [s, b, h, d_nope], q_rope [s, b, h, rope], w_uk [h, d_nope, r] -> [b, s, h, r + rope]."""
    q_lat = torch.einsum("sbhd,hdr->bshr", q_nope, w_uk)
    return torch.cat([q_lat, q_rope.transpose(0, 1)], -1)


def sparse_mla(q_nope, q_rope, c, k_rope, sel, valid, kv_b_weight, nope_dim: int, v_dim: int,
               scale: float) -> torch.Tensor:
    """q_nope/q_rope [s, b, h, *] (this rank's heads), c [s_k, b, r], k_rope [s_k, b, rope], sel/valid
    [b, s, k], kv_b_weight [h * (nope + v), r] -> attention output [s, b, h * v]."""
    s, b, h = q_nope.shape[:3]
    r = c.shape[-1]
    w = kv_b_weight.view(h, nope_dim + v_dim, r)
    w_uk, w_uv = w[:, :nope_dim], w[:, nope_dim:]
    query = absorbed_queries(q_nope, q_rope, w_uk)
    picked = gather_selected(torch.cat([c, k_rope], -1).transpose(0, 1), sel)  # [b, s, k, r + rope]
    logits = torch.einsum("bshc,bskc->bshk", query, picked).float() * scale
    probs = logits.masked_fill(~valid[:, :, None, :], float("-inf")).softmax(-1).to(query.dtype)
    ctx = torch.einsum("bshk,bskr->bshr", probs, picked[..., :r])
    return torch.einsum("bshr,hvr->sbhv", ctx, w_uv).reshape(s, b, h * v_dim)
