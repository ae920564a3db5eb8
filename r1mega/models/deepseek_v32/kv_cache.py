"""The rollout caches of DeepSeek-V3.2: MLA's latent cache plus the indexer's key per token and layer
(index_head_dim values), so each decoding step scores the whole cached prefix with the indexer and
attends to its top-k tokens only. Both of MLA's caches have their V3.2 form: the static one
(`new_kv_cache`, the reference engine) and the paged one of continuous batching
(`paged_kv_layout`: the indexer's keys are a second part of the same blocks, so they are shared,
copied and freed with the latents)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from r1mega.models.deepseek_v3.kv_cache import KVCache, LayerCache, PagedLatentLayer


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

    def decode_mask(self, s: int) -> torch.Tensor:
        """[b, s, L] True = may attend, for the new queries of a decoding step."""
        return self.owner.mask(s)

    def append(self, c, k_rope):
        """As LayerCache.append, the mask narrowed to the indexer's selection when one was set."""
        keys, allowed = super().append(c, k_rope)
        if self.selected is not None:
            allowed, self.selected = allowed & self.selected, None
        return keys, allowed


class PagedIndexedLayer(PagedLatentLayer):
    """One layer of the paged cache: block storage [slots, r + rope] for the latents and
    [slots, index_head_dim] for the indexer's keys."""

    def __init__(self, owner, storage: list[torch.Tensor], layer: int):
        super().__init__(owner, storage, layer)
        self.index_keys = storage[1]
        self.selected: Optional[torch.Tensor] = None

    def store_index(self, k: torch.Tensor) -> torch.Tensor:
        """k [s, b, d] into the new tokens' slots; returns each row's cached keys [b, L, d]."""
        self.index_keys[self.owner.write] = k.flatten(0, 1).to(self.index_keys.dtype)
        return self.index_keys[self.owner.slots_read()]

    def decode_mask(self, s: int) -> torch.Tensor:
        return self.owner.mask()

    def append(self, c, k_rope):
        keys, allowed = super().append(c, k_rope)
        if self.selected is not None:
            allowed, self.selected = allowed & self.selected, None
        return keys, allowed


def paged_indexed_layout(layer_ids: Iterable[int], kv_lora_rank: int, rope_dim: int, index_dim: int):
    """(features stored per token per layer, layer view) of V3.2's paged cache."""
    return {i: [(kv_lora_rank + rope_dim,), (index_dim,)] for i in layer_ids}, PagedIndexedLayer


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
