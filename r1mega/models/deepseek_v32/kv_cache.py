"""The rollout cache of DeepSeek-V3.2: MLA's latent cache plus the indexer's key per token and layer
(index_head_dim values), so each decoding step scores the whole cached prefix with the indexer and
attends to its top-k tokens only."""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from r1mega.models.deepseek_v3.kv_cache import KVCache, LayerCache


class IndexedLayerCache(LayerCache):
    def __init__(self, owner, b, max_len, kv_lora_rank, rope_dim, index_dim, dtype, device):
        super().__init__(owner, b, max_len, kv_lora_rank, rope_dim, dtype, device)
        self.index_keys = torch.zeros(b, max_len, index_dim, dtype=dtype, device=device)
        self.selected: Optional[torch.Tensor] = None  # [b, s, L] mask for the next append

    def store_index(self, k: torch.Tensor) -> torch.Tensor:
        """k [s, b, d]: the new tokens' indexer keys into their slots; returns every cached key [b, L, d]."""
        start, s = self.owner.length, k.shape[0]
        if start + s > self.index_keys.shape[1]:
            raise ValueError(f"KV cache overflow: {start + s} tokens > capacity {self.index_keys.shape[1]}")
        self.index_keys[:, start:start + s] = k.transpose(0, 1)
        return self.index_keys[:, :start + s]

    def append(self, c, k_rope):
        """As LayerCache.append, the mask narrowed to the indexer's selection when one was set."""
        keys, allowed = super().append(c, k_rope)
        if self.selected is not None:
            allowed, self.selected = allowed & self.selected, None
        return keys, allowed


class IndexedKVCache(KVCache):
    def __init__(self, layer_ids: Iterable[int], batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 index_dim: int, valid: torch.Tensor, dtype: torch.dtype, device: torch.device):
        layer_ids = list(layer_ids)
        super().__init__([], batch, max_len, kv_lora_rank, rope_dim, valid, dtype, device)
        self.layers = {i: IndexedLayerCache(self, batch, max_len, kv_lora_rank, rope_dim, index_dim, dtype, device)
                       for i in layer_ids}

    def values_per_token_per_layer(self) -> int:
        c = next(iter(self.layers.values()))
        return c.keys.shape[-1] + c.index_keys.shape[-1]

    def nbytes(self) -> int:
        return super().nbytes() + sum(c.index_keys.numel() * c.index_keys.element_size()
                                      for c in self.layers.values())
