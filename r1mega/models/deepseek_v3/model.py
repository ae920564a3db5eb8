"""DeepSeek-V3 as one pipeline stage: embedding on the first stage, a contiguous run of decoder
layers, and the final norm + vocab-parallel head + MTP modules on the last.

Activations are sequence-first [s, b, D] so that sequence parallelism shards dim 0. Module and
parameter names mirror the Hugging Face checkpoint (`hf_weights.py` maps the few that differ).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v3.kv_cache import KVCache, paged_latent_layout
from r1mega.kernels import batch_invariant
from r1mega.models.deepseek_v3.attention import MLA, exact_layout
from r1mega.models.deepseek_v3.moe import MoE
from r1mega.models.ffn import SwiGLU
from r1mega.parallel.recompute import recomputed
from r1mega.models.rope import RotaryEmbedding
from r1mega.models.stage import (  # noqa: F401  (re-exported for existing callers)
    IGNORE_INDEX, StageOutput, check_sequence_parallel, mtp_labels, place_stage, shift_left, stage_layers,
    stage_load_counted,
    token_loss,
)
from r1mega.parallel.context_parallel import keep_local_tokens
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.tensor_parallel import (
    ColumnParallelLinear, ReplicatedLinear, RMSNorm, enter_tp_region, tag,
)
from r1mega.parallel.vocab_parallel import VocabParallelEmbedding

class DecoderLayer(nn.Module):
    attention_cls = MLA  # DeepSeek-V3.2 swaps in its sparse attention (models/deepseek_v32)

    def __init__(self, cfg: ModelConfig, ps: ParallelState, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.self_attn = self.attention_cls(cfg, ps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.mlp = (MoE(cfg, ps) if cfg.is_moe_layer(layer_idx)
                    else SwiGLU(cfg.hidden_size, cfg.intermediate_size, ps, cfg.initializer_range))

    recompute: frozenset = frozenset()  # "full": keep only the layer input (parallel/recompute.py)

    def forward(self, h, rope, cos, sin, attn_mask=None, cache=None, replay=None, counted=None):
        """counted: bool [b, s], the tokens the MoE counts as expert load (`stage.load_counted`)."""
        if "full" not in self.recompute or cache is not None:
            return self._forward(h, rope, cos, sin, attn_mask, cache, replay, counted)
        runs = []

        def body(h_, cos_, sin_):
            if isinstance(self.mlp, MoE):
                self.mlp.recomputing = bool(runs)
            runs.append(1)
            try:
                return self._forward(h_, rope, cos_, sin_, attn_mask, None, replay, counted)
            finally:
                if isinstance(self.mlp, MoE):
                    self.mlp.recomputing = False
        return recomputed(True, body, h, cos, sin)

    def _forward(self, h, rope, cos, sin, attn_mask, cache, replay, counted):
        h = h + self.self_attn(self.input_layernorm(h), rope, cos, sin, attn_mask, cache)
        m = self.post_attention_layernorm(h)
        return h + (self.mlp(m, cache, replay, counted) if isinstance(self.mlp, MoE) else self.mlp(m))


class SharedHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")


class MTPLayer(DecoderLayer):
    """Multi-Token Prediction depth k: h_k = Block(eh_proj([enorm(emb(t_{i+k})); hnorm(h_{k-1})])),
    logits = head(shared_head.norm(h_k)). Embedding and head are the main model's."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState, layer_idx: int):
        super().__init__(cfg, ps, layer_idx)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.eh_proj = ReplicatedLinear(2 * cfg.hidden_size, cfg.hidden_size, "stream", cfg.initializer_range)
        self.shared_head = SharedHead(cfg)

    def forward(self, h_prev, emb_next, rope, cos, sin, attn_mask=None, cache=None, counted=None):
        """cache: this layer's view of its own paged cache (drafting, inference/speculative.py)."""
        x = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))
        return super().forward(x, rope, cos, sin, attn_mask, cache, None, counted)


class DeepseekV3(nn.Module):
    """Pipeline stage `stage` of `num_stages` (default: this rank's pp rank of pp). With virtual
    pipeline stages (interleaved schedule) a rank holds several, stage = chunk * pp + pp_rank."""

    layer_cls, mtp_layer_cls = DecoderLayer, MTPLayer  # a variant family's blocks (models/deepseek_v32)

    def __init__(self, cfg: ModelConfig, ps: ParallelState, pp_layers: Optional[list[int]] = None,
                 stage: Optional[int] = None, num_stages: Optional[int] = None):
        super().__init__()
        place_stage(self, cfg, ps, pp_layers, stage, num_stages)
        std = cfg.initializer_range
        self.rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling,
                                    cfg.max_position_embeddings, cfg.rope_interleave)
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ps, std)
                             if self.is_first else None)
        self.layers = nn.ModuleDict({str(i): self.layer_cls(cfg, ps, i) for i in self.layer_ids})
        self.norm = self.lm_head = self.mtp = self.mtp_embed = None
        if self.is_last:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
            # DeepSeek-V3 keeps the output head in high precision (also under FP8)
            self.lm_head = ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, ps, std, high_precision=True)
            if cfg.num_mtp_layers:
                n = cfg.num_layers
                self.mtp = nn.ModuleDict({str(n + k): self.mtp_layer_cls(cfg, ps, n + k)
                                         for k in range(cfg.num_mtp_layers)})
                if not self.is_first:
                    # a copy of the embedding; grad_sync sums its gradient with the first stage's
                    self.mtp_embed = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ps, std)
                    tag(self.mtp_embed.weight, tied_embedding=True, copy_of="model.embed_tokens.weight")
        if self.embed_tokens is not None and cfg.num_mtp_layers and self.num_stages > 1:
            tag(self.embed_tokens.weight, tied_embedding=True)

    def param_slices(self):
        """Checkpoint slices of this stage's tensors (`r1mega.models.weights.SliceSpec`)."""
        from r1mega.models.deepseek_v3.hf_weights import param_slices

        return param_slices(self)

    def new_kv_cache(self, batch: int, max_len: int, valid: torch.Tensor, dtype: torch.dtype,
                     device: torch.device) -> KVCache:
        """MLA latent cache for this stage's layers (generation)."""
        return KVCache(self.layer_ids, batch, max_len, self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim, valid,
                       dtype, device)

    def paged_kv_layout(self, layer_ids=None):
        """(features per token per layer, layer view) of the paged rollout cache (inference/paged_cache.py);
        layer_ids: other layers than this stage's decoder layers (the MTP draft's own cache)."""
        return paged_latent_layout(self.layer_ids if layer_ids is None else layer_ids, self.cfg.kv_lora_rank,
                                   self.cfg.qk_rope_head_dim)

    def routed_rows_per_expert(self, batch: int) -> Optional[float]:
        """Rows each local routed expert gets, on average, in a decoding step of `batch` sequences
        (None without MoE layers on this stage); generation uses it to pick the CPU expert path."""
        if not any(self.cfg.is_moe_layer(i) for i in self.layer_ids):
            return None
        return batch * self.cfg.num_experts_per_tok / (self.cfg.n_routed_experts // self.ps.ep)

    # ---- the MTP module as a speculative draft (inference/speculative.py), last stage only ------
    def draft_layer(self) -> int:
        """The layer id of the draft: the first MTP module (its own cache is laid out by paged_kv_layout)."""
        return min(int(i) for i in self.mtp)

    def draft_forward(self, h_prev: torch.Tensor, next_ids: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        """The draft over h_prev [s, b, D] and the embeddings of next_ids [b, s] at positions pos [b, s],
        on its cache (a layer view) -> its output [s, b, D]."""
        cos, sin = self.rope.cos_sin(pos.t())
        return self.mtp[str(self.draft_layer())](h_prev, self._embed(next_ids.t()), self.rope, cos, sin, None, cache)

    def draft_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The shared head over the draft's output h [..., D] -> vocab-sharded logits."""
        return self.lm_head(enter_tp_region(self.mtp[str(self.draft_layer())].shared_head.norm(h), self.ps))

    # ------------------------------------------------------------------------------------------
    def _embed(self, ids_sb: torch.Tensor) -> torch.Tensor:
        table = self.embed_tokens if self.embed_tokens is not None else self.mtp_embed
        return table(ids_sb)

    def forward(self, input_ids: torch.Tensor, hidden: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cache=None,
                routing: Optional[dict] = None, last_logits_only: bool = False,
                keep_hidden: bool = False, counted: Optional[torch.Tensor] = None) -> StageOutput:
        """input_ids/labels [b, s] (every stage gets them); hidden: the previous stage's output.
        cache: a KVCache (inference, this stage's layers); routing: {layer: experts [s, b, k]} to replay;
        counted: bool [b, s], the tokens whose experts count as load in training (`stage.load_counted`);
        last_logits_only: logits of the last position only (sampling reads no others);
        keep_hidden: the last stage also returns its final-normed hidden [s, b, D] (the MTP draft's input).
        Under context parallelism (training and scoring, not cached decoding) the inputs are whole
        rows; this rank keeps its zigzag chunks and the outputs (hidden, logits, token losses) are
        for those tokens only, in local order."""
        s = input_ids.shape[1]
        full_ids, full_labels, full_mask = input_ids, labels, attn_mask
        local = None
        if self.ps.cp > 1 and cache is None:
            cut = keep_local_tokens(input_ids, labels, attn_mask, position_ids, self.ps)
            input_ids, labels, attn_mask, position_ids, local = (
                cut.input_ids, cut.labels, cut.attn_mask, cut.position_ids, cut.index)
            routing = {k: v[local] for k, v in routing.items()} if routing else routing
        check_sequence_parallel(input_ids.shape[1], self.ps)
        positions = (position_ids.t() if position_ids is not None
                     else torch.arange(s, device=input_ids.device))
        cos, sin = self.rope.cos_sin(positions)
        if batch_invariant.enabled() and cache is None and self.ps.cp == 1:  # built once, not per layer
            attn_mask = exact_layout(attn_mask, s, input_ids.shape[0], input_ids.device)
        ids_sb = input_ids.t()
        h = self.embed_tokens(ids_sb) if self.is_first else hidden
        loads = stage_load_counted(self, counted, full_mask, local)
        for name, layer in self.layers.items():
            h = layer(h, self.rope, cos, sin, attn_mask, cache.layer(int(name)) if cache is not None else None,
                      routing.get(int(name)) if routing else None, loads)
        if cache is not None:
            cache.advance(s)
        if not self.is_last:
            return StageOutput(hidden=h)
        h = self.norm(h)
        out = StageOutput(logits=self.lm_head(enter_tp_region(h[-1:] if last_logits_only else h, self.ps)),
                          hidden=h if keep_hidden else None)
        if labels is not None:
            out.token_loss = token_loss(out.logits, labels, self.ps)
        if self.mtp is not None and labels is not None:
            for k, layer in enumerate(self.mtp.values(), start=1):
                # shift the whole rows, then keep this rank's tokens (t_{i+k} may live on another)
                next_ids, next_labels = shift_left(full_ids, k, 0), mtp_labels(full_labels, full_mask, k)
                if local is not None:
                    next_ids, next_labels = next_ids[:, local], next_labels[:, local]
                h = layer(h, self._embed(next_ids.t()), self.rope, cos, sin, attn_mask, None,
                          stage_load_counted(self, counted, full_mask, local, k))
                logits = self.lm_head(enter_tp_region(layer.shared_head.norm(h), self.ps))
                out.mtp_token_loss.append(token_loss(logits, next_labels, self.ps))
        return out
