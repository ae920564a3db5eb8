"""Causal attention with document boundaries that never materialises an s x s tensor.

Masks are described per token, not per pair: `docs` [b, s] integer document ids, and a query at
global index i may attend a key at index j iff j <= i and docs[i] == docs[j]. Packed SFT rows use
one id per packed example; left-padded rollouts give every pad its own id, so it sees only itself.

Queries are processed in blocks of `block` rows (at most 512) against the keys they can reach causally, so the
largest transient is [b, h, block, s_k] scores. The autograd Function saves only q, k, v, the
output and the per-row log-sum-exp, and recomputes each block's probabilities in backward
(FlashAttention's recipe), so activation memory stays linear in s. The log-sum-exp is also what
context parallelism needs: queries of one rank's zigzag chunks, `q_start` giving the global index
of the first one, attend the all-gathered keys 0..s_k-1.

Why not FlexAttention: in torch 2.13 on CPU it raises "FlexAttention does not support backward on
CPU" for inputs that require grad (checked), so it cannot train there; this kernel runs the same
code on CPU and GPU.
"""
from __future__ import annotations

from typing import Optional

import torch

SCORE_BUDGET = 1 << 24  # elements of one block's [b, h, block, s_k] scores (64 MiB in fp32)
MAX_BLOCK = 512


def _block_mask(docs_q: Optional[torch.Tensor], docs_k: Optional[torch.Tensor], q_lo: int, q_hi: int,
                k_hi: int, device) -> torch.Tensor:
    """bool [b or 1, 1, q_hi - q_lo, k_hi]: causal on global indices, same document."""
    qi = torch.arange(q_lo, q_hi, device=device)
    allowed = (torch.arange(k_hi, device=device)[None, :] <= qi[:, None])[None, None]
    if docs_q is not None:
        allowed = allowed & (docs_q[:, None, :, None] == docs_k[:, None, None, :k_hi])
    return allowed


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, docs_q, docs_k, scale: float, q_start: int, block: int):
        b, h, s, _ = q.shape
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax statistics in at least fp32
        out = q.new_empty(b, h, s, v.shape[-1])
        lse = torch.empty(b, h, s, dtype=acc, device=q.device)
        for lo in range(0, s, block):
            hi = min(lo + block, s)
            k_hi = min(q_start + hi, k.shape[2])  # keys beyond the block's last query are never seen
            dq = None if docs_q is None else docs_q[:, lo:hi]
            scores = torch.matmul(q[:, :, lo:hi], k[:, :, :k_hi].transpose(-1, -2)).to(acc) * scale
            scores.masked_fill_(~_block_mask(dq, docs_k, q_start + lo, q_start + hi, k_hi, q.device), float("-inf"))
            row_lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            probs = (scores - row_lse).exp_()
            out[:, :, lo:hi] = torch.matmul(probs.to(v.dtype), v[:, :, :k_hi])
            lse[:, :, lo:hi] = row_lse.squeeze(-1)
        ctx.save_for_backward(q, k, v, out, lse, docs_q, docs_k)
        ctx.scale, ctx.q_start, ctx.block = scale, q_start, block
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse, docs_q, docs_k = ctx.saved_tensors
        scale, q_start, block = ctx.scale, ctx.q_start, ctx.block
        s, acc = q.shape[2], lse.dtype
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k, dtype=acc), torch.zeros_like(v, dtype=acc)
        # D_i = sum_d dO_id O_id; the lse output's own gradient adds directly to every row's dS
        delta = (d_out.to(acc) * out.to(acc)).sum(-1)
        if d_lse is not None:
            delta = delta - d_lse.to(acc)
        for lo in range(0, s, block):
            hi = min(lo + block, s)
            k_hi = min(q_start + hi, k.shape[2])
            dqb = None if docs_q is None else docs_q[:, lo:hi]
            qb, kb, vb = q[:, :, lo:hi], k[:, :, :k_hi], v[:, :, :k_hi]
            scores = torch.matmul(qb, kb.transpose(-1, -2)).to(acc) * scale
            allowed = _block_mask(dqb, docs_k, q_start + lo, q_start + hi, k_hi, q.device)
            probs = (scores - lse[:, :, lo:hi, None]).exp_().masked_fill_(~allowed, 0.0)
            dob = d_out[:, :, lo:hi].to(acc)
            dv[:, :, :k_hi] += torch.matmul(probs.transpose(-1, -2), dob)
            d_scores = probs * (torch.matmul(dob, vb.to(acc).transpose(-1, -2)) - delta[:, :, lo:hi, None])
            dq[:, :, lo:hi] = (torch.matmul(d_scores, kb.to(acc)) * scale).to(q.dtype)
            dk[:, :, :k_hi] += torch.matmul(d_scores.transpose(-1, -2), qb.to(acc)) * scale
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    docs_q: Optional[torch.Tensor] = None, docs_k: Optional[torch.Tensor] = None,
                    q_start: int = 0, block: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [b, h, s, d], k [b, h, s_k, d], v [b, h, s_k, dv]; queries are global indices
    q_start..q_start+s-1, keys 0..s_k-1. docs_q [b, s] / docs_k [b, s_k]: document ids (None:
    one document). block: query rows per step (default: as many as keep the scores within
    SCORE_BUDGET, at most MAX_BLOCK). Returns out [b, h, s, dv] and the log-sum-exp [b, h, s]."""
    if (docs_q is None) != (docs_k is None):
        raise ValueError("block_attention: give document ids for both queries and keys, or neither")
    if q_start + q.shape[2] > k.shape[2]:
        raise ValueError(f"block_attention: queries end at {q_start + q.shape[2]} past the {k.shape[2]} keys")
    if block is None:
        b, h, _, s_k = *q.shape[:3], k.shape[2]
        block = max(16, min(MAX_BLOCK, SCORE_BUDGET // max(b * h * s_k, 1)))
    return _BlockAttention.apply(q, k, v, docs_q, docs_k, scale, q_start, block)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as rows of one tensor, left-padded with pad_id; and each row's pad length (the
    layout `documents_from_pad` gives its documents: both generation engines prefill and lay out
    rollouts this way)."""
    longest = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    pad = torch.empty(len(prompts), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        pad[i] = longest - len(p)
    return ids, pad


def documents_from_pad(pad: torch.Tensor, n: int) -> torch.Tensor:
    """Left-padded rows (pad [b] leading pad tokens) -> document ids [b, n]: real tokens share id 0,
    each pad token its own negative id so it attends only to itself."""
    return documents_from_valid(torch.arange(n, device=pad.device)[None, :] >= pad[:, None])


def documents_from_valid(valid: torch.Tensor) -> torch.Tensor:
    """valid [b, n] bool (False = pad) -> document ids [b, n]: real tokens share id 0, each pad token
    its own negative id (it attends only to itself)."""
    idx = torch.arange(valid.shape[1], device=valid.device)
    return torch.where(valid, torch.zeros((), dtype=torch.long, device=valid.device), -1 - idx[None, :])


def prompt_attention(docs: torch.Tensor) -> Optional[torch.Tensor]:
    """The mask a prompt's forward attends with, given its document ids: None (plain causal, which
    the models run through SDPA's fused kernel) when no row is padded, else the ids (this kernel).
    Measured on CPU, one thread, 1 x 3,000-token prompt: the Qwen2 proxy student's prefill ran at
    0.48x (fp32) / 0.35x (bf16) of transformers through this kernel (the O(s^2) part); through SDPA
    it is at par or better. Padded rows keep this kernel: a pad must not be attended, and so does
    rl.exact_rollouts: its prompt must attend bitwise as the trainer's forward of the same rows does."""
    from r1mega.kernels import batch_invariant  # (imports nothing of this module)

    return docs if batch_invariant.enabled() or bool((docs < 0).any()) else None


def prompt_documents(valid: torch.Tensor, length: int, s: int) -> Optional[torch.Tensor]:
    """Shared by the KV caches of every family: document ids of a cache's first multi-token forward, else None."""
    return documents_from_valid(valid[:, :s]) if length == 0 and s > 1 else None
