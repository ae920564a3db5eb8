"""DeepSeek Sparse Attention: DeepSeek-V3's MLA plus the lightning indexer choosing, for each query,
the top-k tokens MLA attends to.

    context <= index_topk (or the dense warm-up stage): MLA unchanged (every key is selected)
    longer:  indexer top-k per query, then MLA in MQA form over the selected latents (sparse_mla.py)
    decoding: the indexer's keys are cached beside the latents (kv_cache.py); each step scores the
              cached prefix and the absorbed attention reads only the selected slots
The indexer reads detached inputs; with `index_loss_scale` > 0 in training its KL loss
(index_loss.py) rides on the attention output into backward, like MoE's balance loss, wherever the
layer sits in the pipeline, and is counted for logging in that backward.
"""
from __future__ import annotations

from typing import Optional

import torch

from r1mega.models.deepseek_v3.attention import MLA
from r1mega.models.deepseek_v32.index_loss import index_kl_loss
from r1mega.models.deepseek_v32.indexer import Indexer, top_keys
from r1mega.models.deepseek_v32.sparse_mla import absorbed_queries, sparse_mla
from r1mega.parallel.context_parallel import ContextParallelAttention, gather_sequence
from r1mega.parallel.recompute import recomputed
from r1mega.parallel.tensor_parallel import enter_tp_region, leave_tp_region


class _AttachIndexLoss(torch.autograd.Function):
    """Return `out` unchanged; in backward give the indexer loss `kl` the gradient `weight`, and
    count it into its layer's `index_loss_sum` there: backward runs once per microbatch, also when
    full-layer recompute runs the forward twice."""

    @staticmethod
    def forward(ctx, out, kl, weight: float, layer):
        ctx.save_for_backward(kl)
        ctx.weight, ctx.layer = weight, layer
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        (kl,) = ctx.saved_tensors
        total = kl.detach()
        layer = ctx.layer
        layer.index_loss_sum = total if layer.index_loss_sum is None else layer.index_loss_sum + total
        return grad, torch.full_like(kl, ctx.weight), None, None


class DSAttention(MLA):
    def __init__(self, cfg, ps):
        super().__init__(cfg, ps)
        self.indexer = Indexer(cfg, cfg.initializer_range)
        self.dense = False  # the dense warm-up stage: attend to every key whatever the length
        self.index_loss_scale = 0.0  # weight / global tokens, set per step (models/deepseek_v32/training.py)
        self.index_loss_sum: Optional[torch.Tensor] = None  # this step's summed KL (float32, unscaled)

    def forward(self, x, rope, cos, sin, attn_mask=None, cache=None):
        if attn_mask is not None and not isinstance(attn_mask, ContextParallelAttention) and attn_mask.dim() != 2:
            raise ValueError(f"DeepSeek Sparse Attention takes document ids [b, s], got a mask {list(attn_mask.shape)}")
        q_in, c, k_rope = self.project_latents(x, rope, cos, sin)
        x_all = enter_tp_region(x.detach(), self.ps)  # the indexer's input: no LM gradient flows into it
        ik = recomputed("indexer" in self.recompute, self.indexer.keys, x_all, cos, sin)
        prompt_docs = cache.owner.prompt_documents(x.shape[0]) if cache is not None else None
        if cache is not None and prompt_docs is None:
            out = self._decode(q_in, c, k_rope, x_all, ik, rope, cos, sin, cache)
        else:
            if cache is not None:  # the prompt: cache its latents and indexer keys, attend as training does
                cache.store(c, k_rope)
                cache.store_index(ik)
                attn_mask = prompt_docs
            out = self._attend(q_in, c, k_rope, x_all, ik, rope, cos, sin, attn_mask)
        out = leave_tp_region(self.o_proj(out), self.ps)
        return out if self.o_proj.bias is None else out + self.o_proj.bias

    def _attend(self, q_in, c, k_rope, x_all, ik, rope, cos, sin, attn_mask):
        """Training and prefill. Under context parallelism (attn_mask a ContextParallelAttention) the
        queries are this rank's zigzag chunks; latents and indexer keys of the whole sequence are
        all-gathered (their gradients reduce-scattered back), and selection runs over each query's
        whole causal prefix."""
        cfg, topk = self.cfg, self.indexer.topk
        positions = None
        docs_q = docs_k = attn_mask
        if isinstance(attn_mask, ContextParallelAttention):
            cp = attn_mask
            latent = gather_sequence(torch.cat([c, k_rope], -1), self.ps, cp.seq_len)
            c, k_rope = latent.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
            ik = gather_sequence(ik, self.ps, cp.seq_len)
            positions = torch.cat([torch.arange(a, b) for a, b in cp.chunks])  # on the host: no syncs
            docs_q, docs_k = cp.docs_local, cp.docs
        sparse = not self.dense and c.shape[0] > topk
        with_loss = self.training and self.index_loss_scale > 0 and torch.is_grad_enabled()
        sel = valid = iq = iw = None
        if sparse or with_loss:
            iq, iw = recomputed("indexer" in self.recompute, self.indexer.queries, q_in.detach(), x_all, cos, sin)
        if sparse:
            sel, valid = self.indexer.select(iq, iw, ik, docs_q, docs_k, topk, positions)
            q_nope, q_rope = self.query_up(q_in, rope, cos, sin)
            out = sparse_mla(q_nope, q_rope, c, k_rope, sel, valid, self.kv_b_proj.weight, cfg.qk_nope_head_dim,
                             cfg.v_head_dim, self.scale)
        else:
            attend = lambda q_in_, c_, k_rope_, cos_, sin_: self._up_and_attend(  # noqa: E731
                q_in_, c_, k_rope_, rope, cos_, sin_, attn_mask)
            out = recomputed("mla_up_proj" in self.recompute, attend, q_in, c, k_rope, cos, sin)
        if with_loss:
            with torch.no_grad():
                q_nope, q_rope = self.query_up(q_in, rope, cos, sin)
                w = self.kv_b_proj.weight.view(self.local_heads, -1, cfg.kv_lora_rank)[:, :cfg.qk_nope_head_dim]
                query = absorbed_queries(q_nope, q_rope, w)
                latent = torch.cat([c, k_rope], -1).transpose(0, 1)
            kl = index_kl_loss(query, latent, iq.transpose(0, 1), iw.transpose(0, 1), ik.transpose(0, 1), sel, valid,
                               docs_q, docs_k, self.scale, self.ps.g("tp"), positions)
            # every TP rank computes the whole loss; 1/tp each, summed by the indexer's region reduction
            out = _AttachIndexLoss.apply(out, kl, self.index_loss_scale / self.ps.tp, self)
        return out

    def _decode(self, q_in, c, k_rope, x_all, ik, rope, cos, sin, cache):
        """A decoding step: the indexer scores every cached token; past index_topk the absorbed
        attention reads only the top-k slots."""
        keys = cache.store_index(ik)  # [b, L, d]
        allowed = cache.decode_mask(q_in.shape[0])  # [b, s, L]
        if not self.dense and keys.shape[1] > self.indexer.topk:
            iq, iw = self.indexer.queries(q_in, x_all, cos, sin)
            score = Indexer.scores(iq.transpose(0, 1), iw.transpose(0, 1), keys)
            top = top_keys(score.masked_fill(~allowed, float("-inf")), self.indexer.topk)[1]
            cache.selected = torch.zeros_like(allowed).scatter_(-1, top, True)
        q_nope, q_rope = self.query_up(q_in, rope, cos, sin)
        return self._absorbed_attention(q_nope, q_rope, c, k_rope, cache)
