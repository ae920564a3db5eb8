"""Qwen3-MoE as one pipeline stage: the dense family's Qwen3 attention (GQA, per-head q/k RMSNorm,
rotary; KV heads replicated over TP when TP does not divide them) and DeepSeek's routed experts
(softmax router, grouped GEMMs, EP all-to-all dispatch), built from the config's views of itself
(`attention_view`, `moe_view`). Dense-MLP layers (mlp_only_layers, decoder_sparse_step) are SwiGLU.
Tied embeddings as the dense family: under PP the last stage holds a copy of the embedding as its head.

Names follow the Hugging Face checkpoint (`model.` prefix aside); the stacked experts are mapped to
HF's per-expert tensors by DeepSeek's `hf_weights.expert_slices`:
  `layers.<L>.mlp.gate.weight`               the router [E, D]
  `layers.<L>.mlp.experts.w_gate_up[e]`      `...mlp.experts.<E0+e>.gate_proj.weight` | `up_proj.weight`
  `layers.<L>.mlp.experts.w_down[e]`         `...mlp.experts.<E0+e>.down_proj.weight`
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from r1mega.models.deepseek_v3.hf_weights import expert_slices, gather_full as gather_moe
from r1mega.models.deepseek_v3.model import DecoderLayer
from r1mega.models.deepseek_v3.moe import MoE
from r1mega.models.dense.model import DenseStudent, GQAttention
from r1mega.models.ffn import SwiGLU
from r1mega.models.qwen3_moe.config import Qwen3MoeConfig
from r1mega.models.qwen3_moe.kv_cache import RoutedHeadsKVCache, paged_routed_heads_layout
from r1mega.models.stage import StageOutput, check_sequence_parallel, stage_load_counted, token_loss
from r1mega.models.weights import SliceSpec
from r1mega.parallel.context_parallel import keep_local_tokens
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.tensor_parallel import RMSNorm

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


class Qwen3MoeDecoderLayer(DecoderLayer):
    """DeepSeek's decoder layer (its forward: full-layer recompute, the MoE's routing record and
    replay) with Qwen3's attention and Qwen3-MoE's experts."""

    def __init__(self, cfg: Qwen3MoeConfig, ps: ParallelState, layer_idx: int):
        nn.Module.__init__(self)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.self_attn = GQAttention(cfg.attention_view(), ps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.mlp = (MoE(cfg.moe_view(), ps) if cfg.is_moe_layer(layer_idx)
                    else SwiGLU(cfg.hidden_size, cfg.intermediate_size, ps, cfg.initializer_range))


class Qwen3Moe(DenseStudent):
    """Pipeline stage `stage` of `num_stages`: the dense family's stage (embedding, rotary, norm, tied
    or untied head) with Qwen3-MoE's layers, checkpoint names, routed KV cache and routing replay."""

    @staticmethod
    def decoder_layer(cfg: Qwen3MoeConfig, ps: ParallelState, layer_idx: int) -> nn.Module:
        return Qwen3MoeDecoderLayer(cfg, ps, layer_idx)

    def stacked_slices(self, name: str, p: torch.Tensor) -> Optional[list[SliceSpec]]:
        """The routed experts' stacked weights: one slice per expert and HF projection, as DeepSeek's."""
        return expert_slices(self, name, p)

    def gather_full(self, grads: bool = False) -> dict:
        """Full checkpoint-named tensors (or gradients) of this stage. Collective over TP / EP / etp."""
        out = gather_moe(self, grads)
        if self.cfg.tie_word_embeddings and HEAD in out:  # the last stage's copy of the embedding
            head = out.pop(HEAD)
            out.setdefault(EMBED, head)
        return out

    def new_kv_cache(self, batch: int, max_len: int, valid: torch.Tensor, dtype: torch.dtype,
                     device: torch.device) -> RoutedHeadsKVCache:
        attn = next(iter(self.layers.values())).self_attn
        return RoutedHeadsKVCache(self.layer_ids, batch, max_len, attn.kv_local, attn.head_dim, valid, dtype, device)

    def paged_kv_layout(self):
        """(features per token per layer, layer view) of the paged rollout cache (inference/paged_cache.py)."""
        attn = next(iter(self.layers.values())).self_attn
        return paged_routed_heads_layout(self.layer_ids, attn.kv_local, attn.head_dim)

    def routed_rows_per_expert(self, batch: int) -> Optional[float]:
        """Rows each local expert gets, on average, in a decoding step of `batch` sequences (None without
        MoE layers on this stage); generation uses it to pick the CPU expert path."""
        if not any(self.cfg.is_moe_layer(i) for i in self.layer_ids):
            return None
        return batch * self.cfg.num_experts_per_tok / (self.cfg.num_experts // self.ps.ep)

    def forward(self, input_ids: torch.Tensor, hidden: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cache=None, routing: Optional[dict] = None,
                last_logits_only: bool = False, counted: Optional[torch.Tensor] = None) -> StageOutput:
        """input_ids/labels [b, s] (every stage gets them); hidden: the previous stage's output;
        cache: a RoutedHeadsKVCache or paged view (generation); routing: {layer: experts [s, b, k]}
        to replay; counted: bool [b, s], the tokens whose experts count as load in training
        (`stage.load_counted`). Under context parallelism (not cached decoding) the inputs are whole rows and the
        outputs this rank's zigzag chunks, in local order."""
        s = input_ids.shape[1]
        full_mask, local = attn_mask, None
        if self.ps.cp > 1 and cache is None:
            cut = keep_local_tokens(input_ids, labels, attn_mask, position_ids, self.ps)
            input_ids, labels, attn_mask, position_ids = cut.input_ids, cut.labels, cut.attn_mask, cut.position_ids
            routing = {k: v[cut.index] for k, v in routing.items()} if routing else routing
            local = cut.index
        loads = stage_load_counted(self, counted, full_mask, local)
        check_sequence_parallel(input_ids.shape[1], self.ps)
        positions = position_ids.t() if position_ids is not None else torch.arange(s, device=input_ids.device)
        cos, sin = self.rope.cos_sin(positions)
        h = self.embed_tokens(input_ids.t()) if self.is_first else hidden
        for name, layer in self.layers.items():
            h = layer(h, self.rope, cos, sin, attn_mask, cache.layer(int(name)) if cache is not None else None,
                      routing.get(int(name)) if routing else None, loads)
        if cache is not None:
            cache.advance(s)
        if not self.is_last:
            return StageOutput(hidden=h)
        out = StageOutput(logits=self.head(h[-1:] if last_logits_only else h))
        if labels is not None:
            out.token_loss = token_loss(out.logits, labels, self.ps)
        return out
