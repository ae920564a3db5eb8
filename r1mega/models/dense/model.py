"""A dense student (Qwen2/Qwen2.5, Qwen3, Llama 3) as one pipeline stage: GQA attention with rotary
embeddings (Qwen3: each query/key head RMS-normalised first), a SwiGLU FFN, RMSNorm, optionally tied
input/output embeddings.

    q_proj, k_proj, v_proj column-parallel by heads, o_proj row-parallel; gate/up column-, down row-parallel
When the KV heads do not split evenly over TP (fewer KV heads than TP ranks, or a count TP does
not divide), k_proj/v_proj are replicated on every TP rank, each rank attends with the KV heads its
query heads use, and their partial gradients are all-reduced over TP (`tp_partial="region"`).
Module and parameter names mirror the Hugging Face checkpoint (`model.` prefix aside).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1mega.models.dense.config import DenseConfig
from r1mega.models.dense.kv_cache import HeadsKVCache, paged_heads_layout
from r1mega.kernels import linear
from r1mega.kernels.block_attention import block_attention, prompt_attention
from r1mega.models.ffn import SwiGLU
from r1mega.models.rope import RotaryEmbedding
from r1mega.models.stage import StageOutput, check_sequence_parallel, place_stage, token_loss
from r1mega.models.weights import SliceSpec, full_shape, hf_name
from r1mega.parallel.context_parallel import (
    ContextParallelAttention, attend_local_chunks, gather_sequence, keep_local_tokens,
)
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import spec_of, tag
from r1mega.parallel.tensor_parallel import (
    ColumnParallelLinear, ReplicatedLinear, RMSNorm, RowParallelLinear, enter_tp_region, leave_tp_region,
)
from r1mega.parallel.vocab_parallel import VocabParallelEmbedding


def kv_heads_of_rank(num_heads: int, num_kv_heads: int, tp: int, rank: int) -> tuple[int, int, list[int]]:
    """(first KV head, KV heads held, local KV index of each local query head) for TP rank `rank`:
    query head h uses KV head h // (num_heads / num_kv_heads)."""
    local = num_heads // tp
    if num_kv_heads % tp == 0:
        per = num_kv_heads // tp
        return rank * per, per, [h // (local // per) for h in range(local)]
    kv = [(rank * local + h) // (num_heads // num_kv_heads) for h in range(local)]
    return kv[0], kv[-1] - kv[0] + 1, [k - kv[0] for k in kv]


class GQAttention(nn.Module):
    def __init__(self, cfg: DenseConfig, ps: ParallelState):
        super().__init__()
        self.ps = ps
        D, H, KV, hd, std = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_size, cfg.initializer_range
        self.head_dim, self.local_heads = hd, H // ps.tp
        self.split_kv = KV % ps.tp == 0
        self.kv_first, self.kv_local, kv_of_q = kv_heads_of_rank(H, KV, ps.tp, ps.r("tp"))
        # query heads in equal consecutive groups per local KV head: SDPA reads the shared K/V itself
        per = self.local_heads // self.kv_local
        self.grouped = (per * self.kv_local == self.local_heads
                        and kv_of_q == [h // per for h in range(self.local_heads)])
        self.register_buffer("kv_of_q", torch.tensor(kv_of_q), persistent=False)
        self.q_proj = ColumnParallelLinear(D, H * hd, ps, std, bias=cfg.qkv_bias)
        if self.split_kv:
            self.k_proj = ColumnParallelLinear(D, KV * hd, ps, std, bias=cfg.qkv_bias)
            self.v_proj = ColumnParallelLinear(D, KV * hd, ps, std, bias=cfg.qkv_bias)
        else:
            self.k_proj = ReplicatedLinear(D, KV * hd, "region", std, bias=cfg.qkv_bias)
            self.v_proj = ReplicatedLinear(D, KV * hd, "region", std, bias=cfg.qkv_bias)
        self.o_proj = RowParallelLinear(H * hd, D, ps, std, bias=cfg.o_bias)
        # Qwen3: one norm weight shared by every head; each TP rank's gradient covers its own heads
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, "region") if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, "region") if cfg.qk_norm else None
        self.scale = hd ** -0.5

    def _kv(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        t = proj(x).view(*x.shape[:2], -1, self.head_dim)
        return t if self.split_kv else t[:, :, self.kv_first:self.kv_first + self.kv_local]

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, cos, sin, attn_mask=None, cache=None):
        """x [s_local, b, D] residual-stream layout -> same. attn_mask: document ids [b, s] (packing,
        left padding; see block_attention.py) or bool [b, 1, s, s] (True = attend), causal when None,
        or a ContextParallelAttention (set by the model under cp > 1: this rank's rotated K/V are
        all-gathered over cp, reduce-scattered in backward); cache: this layer's slot of a
        `HeadsKVCache` (generation)."""
        x = enter_tp_region(x, self.ps)
        s, b, _ = x.shape
        q, k = self.q_proj(x).view(s, b, self.local_heads, self.head_dim), self._kv(self.k_proj, x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None and not torch.is_grad_enabled():  # q and k rotated by one call (per-op cost)
            q, k = rope.apply(torch.cat([q, k], 2), cos, sin).split([q.shape[2], k.shape[2]], 2)
        else:
            q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
        v = self._kv(self.v_proj, x)
        if isinstance(attn_mask, ContextParallelAttention):  # keys and values of the whole sequence
            kv = gather_sequence(torch.cat([k, v], -1), self.ps, attn_mask.seq_len)
            k, v = kv.split(self.head_dim, -1)
        prompt_docs = cache.owner.prompt_documents(s) if cache is not None else None
        if prompt_docs is not None:  # the prompt: cache its keys/values, attend as training does (O(s) memory)
            cache.store(k, v)
            attn_mask, cache = prompt_attention(prompt_docs), None
        if cache is not None:
            k, v, valid, start = cache.append(k, v)  # [b, L, kv, d]
            attn_mask = _decode_mask(cache.owner, valid, start, s)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [b, kv, L, d]
        else:
            k, v = k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3)
        if not self.grouped:  # uneven groups (KV heads replicated over TP): each query head its KV head
            k, v = k.index_select(1, self.kv_of_q), v.index_select(1, self.kv_of_q)
        q = q.permute(1, 2, 0, 3)  # [b, h, s, d]
        if isinstance(attn_mask, ContextParallelAttention) or (attn_mask is not None and attn_mask.dim() == 2):
            if k.shape[1] != q.shape[1]:  # query head i reads KV head i // group, as enable_gqa does
                k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], 1) for t in (k, v))
            if isinstance(attn_mask, ContextParallelAttention):  # this rank's zigzag query chunks
                out = attend_local_chunks(q, k, v, self.scale, attn_mask)
            else:  # document ids [b, s]: no s x s mask
                out = block_attention(q, k, v, self.scale, attn_mask, attn_mask)[0]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                                 scale=self.scale, enable_gqa=self.grouped)
        out = out.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * self.head_dim)
        out = leave_tp_region(self.o_proj(out), self.ps)
        return out if self.o_proj.bias is None else out + self.o_proj.bias


def _decode_mask(owner, valid: torch.Tensor, start: int, s: int) -> torch.Tensor:
    """[b, 1, s, L] True = attend for queries at slots start..start+s-1 over valid keys (causal; each
    query sees itself). Kept on the cache's owner for the forward's other layers (same start, s, L:
    a static cache's `valid` is fixed, a paged view lives one forward)."""
    key = (start, s, valid.shape[1])
    kept = getattr(owner, "_dense_decode_mask", None)
    if kept is None or kept[0] != key:
        key_slot = torch.arange(valid.shape[1], device=valid.device)[None, :]
        query_slot = torch.arange(start, start + s, device=valid.device)[:, None]
        mask = ((key_slot <= query_slot)[None] & valid[:, None, :]) | (key_slot == query_slot)[None]
        kept = owner._dense_decode_mask = (key, mask[:, None])
    return kept[1]


class DenseDecoderLayer(nn.Module):
    def __init__(self, cfg: DenseConfig, ps: ParallelState):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.self_attn = GQAttention(cfg, ps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, ps, cfg.initializer_range)

    def forward(self, h, rope, cos, sin, attn_mask=None, cache=None):
        h = h + self.self_attn(self.input_layernorm(h), rope, cos, sin, attn_mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class DenseStudent(nn.Module):
    """Pipeline stage `stage` of `num_stages` (default: this rank's pp rank of pp); with virtual
    stages (interleaved schedule) stage = chunk * pp + pp_rank. Tied embeddings under PP: the last
    stage holds a copy of the embedding as its head, its gradient summed with the first stage's."""

    def __init__(self, cfg: DenseConfig, ps: ParallelState, pp_layers: Optional[list[int]] = None,
                 stage: Optional[int] = None, num_stages: Optional[int] = None):
        super().__init__()
        place_stage(self, cfg, ps, pp_layers, stage, num_stages)
        std, tied = cfg.initializer_range, cfg.tie_word_embeddings
        self.rope = RotaryEmbedding(cfg.head_size, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings,
                                    interleave=False)
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ps, std)
                             if self.is_first else None)
        self.layers = nn.ModuleDict({str(i): self.decoder_layer(cfg, ps, i) for i in self.layer_ids})
        self.norm = self.lm_head = None
        if self.is_last:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
            if not (tied and self.is_first):  # one stage with tied embeddings: the head is the embedding
                self.lm_head = ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, ps, std)
                if tied:
                    tag(self.lm_head.weight, tied_embedding=True, copy_of="model.embed_tokens.weight")
        if tied and self.is_first and self.num_stages > 1:
            tag(self.embed_tokens.weight, tied_embedding=True)

    @staticmethod
    def decoder_layer(cfg, ps: ParallelState, layer_idx: int) -> nn.Module:
        """Layer `layer_idx` (a family built on this stage, e.g. Qwen3-MoE, builds its own)."""
        return DenseDecoderLayer(cfg, ps)

    def param_slices(self):
        """Checkpoint slices of this stage's tensors (`r1mega.models.weights.SliceSpec`); a tied copy
        is its source's tensor (transformers saves no lm_head.weight for a tied model), a stacked
        tensor is sliced by `stacked_slices`."""
        ps = self.ps
        for name, p in self.named_parameters():
            stacked = self.stacked_slices(name, p)
            if stacked is not None:
                yield from stacked
                continue
            spec = spec_of(p)
            key = spec.copy_of or hf_name(name)
            dim = spec.tp_shard_dim
            parts = ps.tp if dim is not None else 1
            yield SliceSpec(name, p, None, key, full_shape(p.shape, dim, parts), dim, ps.r("tp"), parts, "tp")

    def stacked_slices(self, name: str, p: torch.Tensor) -> Optional[list[SliceSpec]]:
        """The checkpoint slices of a tensor that stacks several checkpoint tensors (a family built on
        this stage with routed experts, e.g. Qwen3-MoE, slices its own); None for a plain one, as
        every tensor of the dense family is."""
        return None

    def new_kv_cache(self, batch: int, max_len: int, valid: torch.Tensor, dtype: torch.dtype,
                     device: torch.device) -> HeadsKVCache:
        attn = next(iter(self.layers.values())).self_attn
        return HeadsKVCache(self.layer_ids, batch, max_len, attn.kv_local, attn.head_dim, valid, dtype, device)

    def paged_kv_layout(self):
        """(features per token per layer, layer view) of the paged rollout cache (inference/paged_cache.py)."""
        attn = next(iter(self.layers.values())).self_attn
        return paged_heads_layout(self.layer_ids, attn.kv_local, attn.head_dim)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = enter_tp_region(self.norm(h), self.ps)
        return self.lm_head(h) if self.lm_head is not None else linear(h, self.embed_tokens.weight)

    def forward(self, input_ids: torch.Tensor, hidden: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cache=None, last_logits_only: bool = False,
                counted: Optional[torch.Tensor] = None) -> StageOutput:
        """input_ids/labels [b, s] (every stage gets them); hidden: the previous stage's output.
        last_logits_only: logits of the last position only (sampling reads no others). counted: the
        tokens an MoE counts as expert load (`stage.load_counted`); a dense model has none to count.
        Under context parallelism (training and scoring, not cached decoding) the inputs are whole
        rows; this rank keeps its zigzag chunks and the outputs (hidden, logits, token losses) are
        for those tokens only, in local order."""
        s = input_ids.shape[1]
        if self.ps.cp > 1 and cache is None:  # whole rows in; this rank's zigzag chunks from here on
            cut = keep_local_tokens(input_ids, labels, attn_mask, position_ids, self.ps)
            input_ids, labels, attn_mask, position_ids = cut.input_ids, cut.labels, cut.attn_mask, cut.position_ids
        check_sequence_parallel(input_ids.shape[1], self.ps)
        positions = position_ids.t() if position_ids is not None else torch.arange(s, device=input_ids.device)
        cos, sin = self.rope.cos_sin(positions)
        h = self.embed_tokens(input_ids.t()) if self.is_first else hidden
        for name, layer in self.layers.items():
            h = layer(h, self.rope, cos, sin, attn_mask, cache.layer(int(name)) if cache is not None else None)
        if cache is not None:
            cache.advance(s)
        if not self.is_last:
            return StageOutput(hidden=h)
        out = StageOutput(logits=self.head(h[-1:] if last_logits_only else h))
        if labels is not None:
            out.token_loss = token_loss(out.logits, labels, self.ps)
        return out
