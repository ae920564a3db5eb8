"""Multi-head Latent Attention, heads split over TP.

    x ──q_a_proj─q_a_layernorm─q_b_proj──> q [nope | rope]     (or q_proj when q_lora_rank is null)
    x ──kv_a_proj_with_mqa──> [c_kv (kv_lora_rank) | k_rope (shared by all heads)]
         c_kv ─kv_a_layernorm─kv_b_proj─> [k_nope | v] per head
The low-rank down projections are replicated on every TP rank (small) and run on the residual-
stream layout (this rank's tokens under SP); only their small outputs enter the TP region (as in
Megatron-LM). So they see complete output gradients, which FP8 quantises exactly as one process
would, and the region entry moves q_lora + kv_lora + rope features per token instead of hidden.
q_b/kv_b are column-parallel by heads, o_proj row-parallel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.kernels import batch_invariant
from r1mega.kernels.block_attention import block_attention, prompt_attention
from r1mega.parallel.recompute import recomputed
from r1mega.models.rope import RotaryEmbedding, softmax_scale
from r1mega.parallel.context_parallel import ContextParallelAttention, attend_local_chunks, gather_sequence
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.tensor_parallel import (
    ColumnParallelLinear, ReplicatedLinear, RMSNorm, RowParallelLinear, enter_tp_region, leave_tp_region,
)

LATENT_NORM_EPS = 1e-6  # q_a/kv_a layernorms use the reference's default eps, not rms_norm_eps


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.cfg, self.ps = cfg, ps
        self.local_heads = cfg.num_heads // ps.tp
        std, D = cfg.initializer_range, cfg.hidden_size
        if cfg.q_lora_rank:
            self.q_a_proj = ReplicatedLinear(D, cfg.q_lora_rank, "stream", std, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS, "stream")
            self.q_b_proj = ColumnParallelLinear(cfg.q_lora_rank, cfg.num_heads * cfg.qk_head_dim, ps, std)
        else:
            self.q_proj = ColumnParallelLinear(D, cfg.num_heads * cfg.qk_head_dim, ps, std)
        self.kv_a_proj_with_mqa = ReplicatedLinear(D, cfg.kv_lora_rank + cfg.qk_rope_head_dim, "stream", std,
                                                   bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, LATENT_NORM_EPS, "stream")
        self.kv_b_proj = ColumnParallelLinear(cfg.kv_lora_rank, cfg.num_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                              ps, std)
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.v_head_dim, D, ps, std, bias=cfg.attention_bias)
        self.scale = softmax_scale(cfg.qk_head_dim, cfg.rope_scaling)

    recompute: frozenset = frozenset()  # "mla_up_proj" / "core_attn" (parallel/recompute.py)

    def project_latents(self, x: torch.Tensor, rope: RotaryEmbedding, cos, sin, rotate: bool = True):
        """x [s_local, b, D] residual-stream layout -> in the TP region: what the query
        up-projection reads (the normalised q latent, or x without q LoRA), the normalised latent
        c_kv [s, b, kv_lora_rank] and the rotated k_rope [s, b, rope_dim]."""
        cfg = self.cfg
        c, k_rope = self.kv_a_proj_with_mqa(x).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
        parts = [self.kv_a_layernorm(c), k_rope]
        if cfg.q_lora_rank:
            parts.append(self.q_a_layernorm(self.q_a_proj(x)))
        if self.ps.g("tp") is not None:  # one region entry for the three (without TP it is the identity)
            parts = enter_tp_region(torch.cat(parts, -1), self.ps).split([p.shape[-1] for p in parts], -1)
        c, k_rope = parts[0], (rope.apply(parts[1].unsqueeze(2), cos, sin).squeeze(2) if rotate else parts[1])
        q_in = parts[2] if cfg.q_lora_rank else enter_tp_region(x, self.ps)
        return q_in, c, k_rope

    def query_up(self, q_in: torch.Tensor, rope: RotaryEmbedding, cos, sin, rotate: bool = True):
        """q_in -> per-head q_nope and rotated q_rope [s, b, h_local, *] (rotate=False: not rotated yet)."""
        cfg = self.cfg
        q = self.q_b_proj(q_in) if cfg.q_lora_rank else self.q_proj(q_in)
        q = q.view(*q_in.shape[:2], self.local_heads, cfg.qk_head_dim)
        q_nope, q_rope = q.split([cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], -1)
        return q_nope, (rope.apply(q_rope, cos, sin) if rotate else q_rope)

    def project(self, x: torch.Tensor, rope: RotaryEmbedding, cos, sin):
        """x [s_local, b, D] -> in the TP region: q_nope, rotated q_rope, c_kv, rotated k_rope."""
        q_in, c, k_rope = self.project_latents(x, rope, cos, sin)
        return (*self.query_up(q_in, rope, cos, sin), c, k_rope)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None, cache=None) -> torch.Tensor:
        """x [s_local, b, D] residual-stream layout -> same layout. attn_mask: None (causal), document
        ids [b, s] (int; packing and left padding, see block_attention.py), or a dense bool
        [b, 1, s, s] (True = attend; a reference only: O(s^2) memory), or a ContextParallelAttention
        (set by the model under cp > 1). cache: this layer's slot of a
        `KVCache` (inference): the new tokens' latents are appended and attention reads the cache."""
        cfg = self.cfg
        if batch_invariant.enabled() and not isinstance(attn_mask, ContextParallelAttention):
            q_in, c, k_rope = self.project_latents(x, rope, cos, sin)
            out = self._exact_attention(q_in, c, k_rope, rope, cos, sin, attn_mask, cache)
            out = leave_tp_region(self.o_proj(out), self.ps)
            return out if self.o_proj.bias is None else out + self.o_proj.bias
        prompt_docs = cache.owner.prompt_documents(x.shape[0]) if cache is not None else None
        decoding = cache is not None and prompt_docs is None
        q_in, c, k_rope = self.project_latents(x, rope, cos, sin, rotate=not decoding)
        if prompt_docs is not None:  # the prompt: cache its latents, attend as training does (O(s) memory)
            cache.store(c, k_rope)
            out = self._up_and_attend(q_in, c, k_rope, rope, cos, sin, prompt_attention(prompt_docs))
        elif decoding:  # absorbed attention over the latent cache
            q_nope, q_rope = self.query_up(q_in, rope, cos, sin, rotate=False)
            # q and k rotated by one call (k as one more head): a decoding step is mostly per-op cost
            both = rope.apply(torch.cat([q_rope, k_rope.unsqueeze(2)], 2), cos, sin)
            out = self._absorbed_attention(q_nope, both[:, :, :-1], c, both[:, :, -1], cache)
        else:
            if isinstance(attn_mask, ContextParallelAttention):  # keys of the whole sequence
                latent = gather_sequence(torch.cat([c, k_rope], -1), self.ps, attn_mask.seq_len)
                c, k_rope = latent.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
            attend = lambda q_in, c_, k_rope_, cos_, sin_: self._up_and_attend(  # noqa: E731
                q_in, c_, k_rope_, rope, cos_, sin_, attn_mask)
            out = recomputed("mla_up_proj" in self.recompute, attend, q_in, c, k_rope, cos, sin)
        out = leave_tp_region(self.o_proj(out), self.ps)
        return out if self.o_proj.bias is None else out + self.o_proj.bias

    def _up_and_attend(self, q_in, c, k_rope, rope, cos, sin, attn_mask) -> torch.Tensor:
        """Latents -> per-head q, k, v (up-projections, RoPE) -> attention output [s, b, h * dv].
        Under context parallelism c/k_rope cover the whole sequence and q_in this rank's tokens."""
        cfg = self.cfg
        s_k, b = c.shape[:2]
        s = q_in.shape[0]
        q_nope, q_rope = self.query_up(q_in, rope, cos, sin)
        kv = self.kv_b_proj(c).view(s_k, b, self.local_heads, cfg.qk_nope_head_dim + cfg.v_head_dim)
        k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], -1)
        q = torch.cat([q_nope, q_rope], -1)
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(s_k, b, self.local_heads, cfg.qk_rope_head_dim)], -1)
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        core = lambda q_, k_, v_: self._core_attention(q_, k_, v_, attn_mask)  # noqa: E731
        out = recomputed("core_attn" in self.recompute and "mla_up_proj" not in self.recompute, core, q, k, v)
        return out.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * cfg.v_head_dim)

    def _core_attention(self, q, k, v, attn_mask) -> torch.Tensor:
        """q [b, h, s, d], k/v [b, h, s_k, d] -> [b, h, s, dv]. Plain causal rows take SDPA's fused
        kernel (on CPU with v padded to d: with unequal head dims, as MLA's, SDPA would fall back to
        building the s x s causal mask); document ids and context-parallel chunks take the
        blockwise kernel."""
        if isinstance(attn_mask, ContextParallelAttention):  # this rank's zigzag query chunks
            return attend_local_chunks(q, k, v, self.scale, attn_mask)
        if (attn_mask is None and q.is_cuda) or (attn_mask is not None and attn_mask.dim() == 4):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                                  scale=self.scale)
        if attn_mask is None:
            # plain causal rows on CPU: v zero-padded to the q/k head dim lets SDPA take its fused
            # flash kernel (blockwise, no s x s tensor); measured 1.35x (256 tokens) to 2.7x (1K)
            # faster than the block kernel for forward + backward, equal within float rounding
            dv = v.shape[-1]
            v = F.pad(v, (0, q.shape[-1] - dv)) if dv < q.shape[-1] else v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)[..., :dv]
        if attn_mask.shape != (q.shape[0], q.shape[2]) or attn_mask.is_floating_point():
            raise ValueError(f"attention: document ids must be integer [b, s] = {[q.shape[0], q.shape[2]]}, "
                             f"got {attn_mask.dtype} {list(attn_mask.shape)}")
        return block_attention(q, k, v, self.scale, attn_mask, attn_mask)[0]

    def _absorbed_attention(self, q_nope, q_rope, c, k_rope, cache) -> torch.Tensor:
        """Attention over the latent cache with kv_b_proj absorbed into the query and the output:
        scores = [q_nope W_uk | q_rope] . [c | k_rope], out = (softmax . c) W_uv. The cache holds only
        c (kv_lora_rank) and k_rope (qk_rope_head_dim) per token, never per-head keys and values.
        Every product is one batched matmul over (batch x heads) or heads."""
        cfg, h, r = self.cfg, self.local_heads, self.cfg.kv_lora_rank
        keys, allowed = cache.append(c, k_rope)  # [b, L, r + rope], bool [b, s, L]
        s, b = q_nope.shape[:2]
        dtype = q_nope.dtype
        # float32 throughout: the absorbed products round differently from the training path's
        # (kv_b_proj applied first) in bf16; in float32 both are close to exact, which cut the
        # sampler/trainer log-prob gap of bf16 GRPO ~60x in KL (README, bench/grpo_logprob_gap.py)
        q_nope, q_rope, keys = (t if t.dtype == torch.float32 else t.float() for t in (q_nope, q_rope, keys))
        w_uk, w_uv = self._absorbed_weights()
        # q_nope [s, b, h, d] -> [h, s*b, d] @ w_uk [h, d, r] -> latent queries
        q_lat = torch.bmm(q_nope.reshape(s * b, h, -1).transpose(0, 1), w_uk)
        q_lat = q_lat.view(h, s, b, r).permute(2, 0, 1, 3)  # [b, h, s, r]
        query = torch.cat([q_lat, q_rope.permute(1, 2, 0, 3)], dim=-1).reshape(b, h * s, -1)
        scores = torch.bmm(query, keys.transpose(1, 2)).view(b, h, s, -1)  # [b, h, s, L]
        # the fill mask once a forward for all layers where the cache keeps it
        blocked = cache.owner.blocked(allowed) if hasattr(cache.owner, "blocked") else ~allowed[:, None]
        scores = (scores * self.scale).masked_fill_(blocked, float("-inf"))
        probs = scores.softmax(-1).view(b, h * s, -1)
        ctx = torch.bmm(probs, keys[..., :r]).view(b, h, s, r)  # attention-weighted latents
        # [b, h, s, r] -> [h, s*b, r] @ w_uv^T [h, r, v] -> [s, b, h, v]
        out = torch.bmm(ctx.permute(1, 2, 0, 3).reshape(h, s * b, r), w_uv.transpose(1, 2))
        out = out.view(h, s, b, cfg.v_head_dim).permute(1, 2, 0, 3).reshape(s, b, h * cfg.v_head_dim)
        return out if dtype == torch.float32 else out.to(dtype)

    def _absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj's weight as per-head float32 W_uk [h, d_nope, r] and W_uv [h, d_v, r]. A float32
        weight gives views of itself, kept while it is the same storage: an optimizer step writes
        through `p.data.copy_` (no version bump) and the views see it; a reload that swaps the storage
        rebuilds them. Another dtype is copied to float32 every call, never kept (a kept copy would
        miss such a step)."""
        w = self.kv_b_proj.weight
        cfg = self.cfg
        shape = (self.local_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
        if w.dtype != torch.float32 or torch.compiler.is_compiling():  # (in a graph views are free and
            full = w.float().view(shape)  # data_ptr would break it)
            return full[:, :cfg.qk_nope_head_dim], full[:, cfg.qk_nope_head_dim:]
        cached = getattr(self, "_absorbed_cache", None)
        if cached is None or cached[0] != w.data_ptr():
            full, dn = w.view(shape), cfg.qk_nope_head_dim
            cached = self._absorbed_cache = (w.data_ptr(), full[:, :dn], full[:, dn:])
        return cached[1], cached[2]

    def _exact_attention(self, q_in, c, k_rope, rope, cos, sin, attn_mask, cache) -> torch.Tensor:
        """rl.exact_rollouts: the absorbed form for training, prompts and decoding alike, over keys laid
        out per document at their absolute positions (kernels/batch_invariant.py), so a token's output
        is bitwise the same in each. float32 inside, as the default decode."""
        cfg, h, r = self.cfg, self.local_heads, self.cfg.kv_lora_rank
        s, b = q_in.shape[:2]
        T, dn = s * b, cfg.qk_nope_head_dim
        q_nope, q_rope = self.query_up(q_in, rope, cos, sin)
        w = self.kv_b_proj.weight.float().view(h, dn + cfg.v_head_dim, r)
        w_uk, w_uv_t = w[:, :dn].contiguous(), w[:, dn:].transpose(1, 2).contiguous()
        q_lat = batch_invariant.bmm(q_nope.float().reshape(T, h, dn).transpose(0, 1).contiguous(), w_uk)
        query = torch.cat([q_lat.transpose(0, 1), q_rope.float().reshape(T, h, -1)], -1)  # [T, h, r + rope]
        d = query.shape[-1]
        prompt_docs = cache.owner.prompt_documents(s) if cache is not None else None
        if cache is not None and prompt_docs is None:  # decoding: the cache read, each row from column 0
            cached, _ = cache.append(c, k_rope)  # [b, L, d]
            cols, q_pos = batch_invariant.decode_layout(cache.owner.valid[:, :cached.shape[1]], s)
            keys = cached.gather(1, cols[..., None].expand(-1, -1, d)).float()
            ctx = batch_invariant.latent_attention(query.view(s, b, h, d).transpose(0, 1), keys, q_pos,
                                                   self.scale, r).transpose(0, 1).reshape(T, h, r)
        else:
            if cache is not None:
                cache.store(c, k_rope)
                layout = getattr(cache.owner, "exact_layout", None)
                if layout is None:  # once per forward, shared by the layers
                    layout = cache.owner.exact_layout = batch_invariant.DocumentLayout(prompt_docs)
            else:
                layout = exact_layout(attn_mask, s, b, c.device)
            keys = layout.scatter(torch.cat([c, k_rope], -1).reshape(T, d).float())
            ctx = layout.gather(batch_invariant.latent_attention(layout.scatter(query), keys, None,
                                                                 self.scale, r))
        out = batch_invariant.bmm(ctx.transpose(0, 1).contiguous(), w_uv_t)  # [h, T, dv]
        return out.transpose(0, 1).reshape(s, b, h * cfg.v_head_dim).to(q_in.dtype)


def exact_layout(attn_mask, s: int, b: int, device) -> "batch_invariant.DocumentLayout":
    """The document layout of a forward's attention mask (None: one causal document per row)."""
    if isinstance(attn_mask, batch_invariant.DocumentLayout):
        return attn_mask
    if attn_mask is None:
        attn_mask = torch.zeros(b, s, dtype=torch.long, device=device)
    if attn_mask.dim() != 2 or attn_mask.is_floating_point():
        raise ValueError("rl.exact_rollouts: attention takes document ids [b, s], not a dense mask")
    return batch_invariant.DocumentLayout(attn_mask)
