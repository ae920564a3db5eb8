"""DeepSeek-V3 as one pipeline stage: embedding on the first stage, a contiguous run of decoder
layers, and the final norm + vocab-parallel head + MTP modules on the last.

Activations are sequence-first [s, b, D] so that sequence parallelism shards dim 0. Module and
parameter names mirror the Hugging Face checkpoint (`hf_weights.py` maps the few that differ).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from r1mega.config import ModelConfig
from r1mega.models.deepseek_v3.attention import MLA
from r1mega.models.deepseek_v3.moe import DenseMLP, MoE
from r1mega.models.deepseek_v3.rope import RotaryEmbedding
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.tensor_parallel import (
    ColumnParallelLinear, ReplicatedLinear, RMSNorm, enter_tp_region, tag,
)
from r1mega.parallel.vocab_parallel import VocabParallelEmbedding, vocab_parallel_cross_entropy

IGNORE_INDEX = -100


def stage_layers(num_layers: int, pp: int, stage: int, pp_layers: Optional[list[int]] = None) -> range:
    """Layer indices of pipeline stage `stage`. Even split; extra layers go to the earlier stages,
    since the last stage also carries the head and the MTP modules."""
    counts = pp_layers or [num_layers // pp + (1 if i < num_layers % pp else 0) for i in range(pp)]
    start = sum(counts[:stage])
    return range(start, start + counts[stage])


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ps: ParallelState, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.self_attn = MLA(cfg, ps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
        self.mlp = (MoE(cfg, ps) if cfg.is_moe_layer(layer_idx)
                    else DenseMLP(cfg.hidden_size, cfg.intermediate_size, ps, cfg.initializer_range))

    def forward(self, h, rope, cos, sin, attn_mask=None, cache=None, replay=None):
        h = h + self.self_attn(self.input_layernorm(h), rope, cos, sin, attn_mask, cache)
        m = self.post_attention_layernorm(h)
        return h + (self.mlp(m, cache, replay) if isinstance(self.mlp, MoE) else self.mlp(m))


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

    def forward(self, h_prev, emb_next, rope, cos, sin, attn_mask=None):
        x = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))
        return super().forward(x, rope, cos, sin, attn_mask)


@dataclass
class StageOutput:
    hidden: Optional[torch.Tensor] = None  # [s_local, b, D] to send on (non-last stages)
    logits: Optional[torch.Tensor] = None  # [s, b, V/tp] vocab-sharded (last stage)
    token_loss: Optional[torch.Tensor] = None  # [b, s] per-token CE, 0 where ignored
    mtp_token_loss: list[torch.Tensor] = field(default_factory=list)  # per MTP depth, [b, s]


def shift_left(t: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """t[:, i] <- t[:, i + k], the last k columns filled."""
    if k == 0:
        return t
    out = torch.full_like(t, fill)
    out[:, :-k] = t[:, k:]
    return out


class DeepseekV3(nn.Module):
    """Pipeline stage `stage` of `num_stages` (default: this rank's pp rank of pp). With virtual
    pipeline stages (interleaved schedule) a rank holds several, stage = chunk * pp + pp_rank."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState, pp_layers: Optional[list[int]] = None,
                 stage: Optional[int] = None, num_stages: Optional[int] = None):
        super().__init__()
        self.cfg, self.ps = cfg, ps
        self.stage = ps.r("pp") if stage is None else stage
        self.num_stages = ps.pp if num_stages is None else num_stages
        self.is_first = self.stage == 0
        self.is_last = self.stage == self.num_stages - 1
        self.layer_ids = stage_layers(cfg.num_layers, self.num_stages, self.stage, pp_layers)
        std = cfg.initializer_range
        self.rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling,
                                    cfg.max_position_embeddings, cfg.rope_interleave)
        self.embed_tokens = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ps, std)
                             if self.is_first else None)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(cfg, ps, i) for i in self.layer_ids})
        self.norm = self.lm_head = self.mtp = self.mtp_embed = None
        if self.is_last:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "stream")
            # DeepSeek-V3 keeps the output head in high precision (also under FP8)
            self.lm_head = ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, ps, std, high_precision=True)
            if cfg.num_mtp_layers:
                n = cfg.num_layers
                self.mtp = nn.ModuleDict({str(n + k): MTPLayer(cfg, ps, n + k) for k in range(cfg.num_mtp_layers)})
                if not self.is_first:
                    # a copy of the embedding; grad_sync sums its gradient with the first stage's
                    self.mtp_embed = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ps, std)
                    tag(self.mtp_embed.weight, tied_embedding=True, is_mtp_copy=True)
        if self.embed_tokens is not None and cfg.num_mtp_layers and self.num_stages > 1:
            tag(self.embed_tokens.weight, tied_embedding=True)

    # ------------------------------------------------------------------------------------------
    def _embed(self, ids_sb: torch.Tensor) -> torch.Tensor:
        table = self.embed_tokens if self.embed_tokens is not None else self.mtp_embed
        return table(ids_sb)

    def forward(self, input_ids: torch.Tensor, hidden: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cache=None,
                routing: Optional[dict] = None) -> StageOutput:
        """input_ids/labels [b, s] (every stage gets them); hidden: the previous stage's output.
        cache: a KVCache (inference, this stage's layers); routing: {layer: experts [s, b, k]} to replay."""
        b, s = input_ids.shape
        if self.ps.sp and s % self.ps.tp:
            raise ValueError(f"sequence parallel: sequence length {s} is not divisible by tp={self.ps.tp}")
        positions = (position_ids.t() if position_ids is not None
                     else torch.arange(s, device=input_ids.device))
        cos, sin = self.rope.cos_sin(positions)
        ids_sb = input_ids.t()
        h = self.embed_tokens(ids_sb) if self.is_first else hidden
        for name, layer in self.layers.items():
            h = layer(h, self.rope, cos, sin, attn_mask, cache.layer(int(name)) if cache is not None else None,
                      routing.get(int(name)) if routing else None)
        if cache is not None:
            cache.advance(s)
        if not self.is_last:
            return StageOutput(hidden=h)
        h = self.norm(h)
        out = StageOutput(logits=self.lm_head(enter_tp_region(h, self.ps)))
        if labels is not None:
            out.token_loss = self._token_loss(out.logits, labels)
        if self.mtp is not None and labels is not None:
            for k, layer in enumerate(self.mtp.values(), start=1):
                emb = self._embed(shift_left(input_ids, k, 0).t())
                h = layer(h, emb, self.rope, cos, sin, attn_mask)
                logits = self.lm_head(enter_tp_region(layer.shared_head.norm(h), self.ps))
                out.mtp_token_loss.append(self._token_loss(logits, shift_left(labels, k, IGNORE_INDEX)))
        return out

    def _token_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = vocab_parallel_cross_entropy(logits, labels.t(), self.ps).t()  # [b, s]
        return loss.masked_fill(labels == IGNORE_INDEX, 0.0)
