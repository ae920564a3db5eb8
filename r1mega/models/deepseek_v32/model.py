"""DeepSeek-V3.2 as one pipeline stage: DeepSeek-V3 (embedding, MoE, MTP, head, every parallel
layout) with DeepSeek Sparse Attention in each decoder block and the indexer's keys in the cache.
Parameter names mirror the Hugging Face checkpoint: `layers.N.self_attn.indexer.{wq_b, wk,
k_norm, weights_proj}` beside MLA's."""
from __future__ import annotations

import torch

from r1mega.models.deepseek_v3.model import DecoderLayer, DeepseekV3, MTPLayer
from r1mega.models.deepseek_v32.attention import DSAttention
from r1mega.models.deepseek_v32.kv_cache import IndexedKVCache, paged_indexed_layout


class DSADecoderLayer(DecoderLayer):
    attention_cls = DSAttention


class DSAMTPLayer(MTPLayer):
    attention_cls = DSAttention


class DeepseekV32(DeepseekV3):
    layer_cls, mtp_layer_cls = DSADecoderLayer, DSAMTPLayer

    def new_kv_cache(self, batch: int, max_len: int, valid: torch.Tensor, dtype: torch.dtype,
                     device: torch.device) -> IndexedKVCache:
        return IndexedKVCache(self.layer_ids, batch, max_len, self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim,
                              self.cfg.index_head_dim, valid, dtype, device)

    def paged_kv_layout(self, layer_ids=None):
        """(features per token per layer, layer view) of the paged rollout cache: latents + indexer keys."""
        return paged_indexed_layout(self.layer_ids if layer_ids is None else layer_ids, self.cfg.kv_lora_rank,
                                    self.cfg.qk_rope_head_dim, self.cfg.index_head_dim)
