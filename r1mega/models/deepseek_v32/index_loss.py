"""The indexer's training loss (DeepSeek-V3.2, sec. 2.1): KL(p_t || softmax(I_t)), where p_t is the
main attention's distribution of query t summed over all heads and L1-normalised, over
  dense warm-up   every key t may attend (causal, same document),
  sparse training the keys the indexer selected for t.
The target is computed without gradient and the indexer reads detached inputs, so the loss trains
the indexer only, and the language-model loss never reaches it.

Queries go by blocks, each block recomputed in backward (checkpoint): the largest transient is one
block's [b, block, heads, keys]; nothing s x s is kept. Under TP each rank holds some attention heads:
their summed probabilities are all-reduced (no gradient) so every rank has the same target.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from r1mega.models.deepseek_v32.indexer import SCORE_BUDGET, Indexer
from r1mega.models.deepseek_v32.sparse_mla import gather_selected


def _block_kl(lo, hi, query, latent, iq, iw, ik, sel, valid, docs, scale, tp_group):
    """Summed KL of queries lo..hi-1. query [b, s, h, R] (absorbed, detached), latent [b, s_k, R];
    iq [b, s, H, d], iw [b, s, H], ik [b, s_k, d]; sel/valid [b, s, k] or None (dense)."""
    with torch.no_grad():
        if sel is None:
            keys = latent[:, :hi]
            logits = torch.einsum("bnhc,bmc->bnhm", query[:, lo:hi], keys).float() * scale
            allowed = torch.arange(hi, device=keys.device)[None, :] <= torch.arange(lo, hi, device=keys.device)[:, None]
            allowed = allowed[None]
            if docs is not None:
                allowed = allowed & (docs[:, lo:hi, None] == docs[:, None, :hi])
        else:
            picked = gather_selected(latent, sel[:, lo:hi])
            logits = torch.einsum("bnhc,bnkc->bnhk", query[:, lo:hi], picked).float() * scale
            allowed = valid[:, lo:hi]
        probs = logits.masked_fill(~allowed[:, :, None], float("-inf")).softmax(-1).sum(2)
        if tp_group is not None:
            dist.all_reduce(probs, group=tp_group)
        target = probs / probs.sum(-1, keepdim=True)
    if sel is None:
        index = Indexer.scores(iq[:, lo:hi], iw[:, lo:hi], ik[:, :hi])
    else:
        keys = gather_selected(ik, sel[:, lo:hi])  # [b, n, k, d]
        per_head = torch.einsum("bnhd,bnkd->bnhk", iq[:, lo:hi].float(), keys.float()).relu()
        index = torch.einsum("bnh,bnhk->bnk", iw[:, lo:hi], per_head)
    log_q = index.masked_fill(~allowed, float("-inf")).log_softmax(-1)
    # target 0 outside `allowed` (and where attention gave a key no weight): those terms are 0
    terms = torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_q), torch.zeros_like(log_q))
    return terms.sum()


def index_kl_loss(query: torch.Tensor, latent: torch.Tensor, iq: torch.Tensor, iw: torch.Tensor, ik: torch.Tensor,
                  sel: Optional[torch.Tensor], valid: Optional[torch.Tensor], docs: Optional[torch.Tensor],
                  scale: float, tp_group=None) -> torch.Tensor:
    """Sum over queries of KL(target || indexer), float32. Shapes as _block_kl."""
    b, s, h = query.shape[:3]
    width = latent.shape[1] if sel is None else sel.shape[-1]
    block = max(1, min(s, SCORE_BUDGET // max(1, b * max(h, iq.shape[2]) * width)))
    total = iw.new_zeros(())
    for lo in range(0, s, block):
        hi = min(s, lo + block)
        total = total + checkpoint(_block_kl, lo, hi, query, latent, iq, iw, ik, sel, valid, docs, scale,
                                   tp_group, use_reentrant=False)
    return total
