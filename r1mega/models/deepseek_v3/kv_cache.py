"""The rollout KV cache. For MLA it holds, per token and layer, the normalised latent c_kv
(kv_lora_rank values) and the rotated shared RoPE key (qk_rope_head_dim values) - not per-head
keys and values. Both live side by side in one [b, L, kv_lora_rank + rope] buffer, so the
absorbed attention scores every cached token with a single batched matmul. Sequences are
left-padded to a common prompt length and decode in lockstep; `valid` marks the pad slots that no
query may attend to."""
from __future__ import annotations

from typing import Iterable

import torch

from r1mega.kernels.block_attention import prompt_documents


class LayerCache:
    def __init__(self, owner: "KVCache", b: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.owner = owner
        self.rank = kv_lora_rank
        self.keys = torch.zeros(b, max_len, kv_lora_rank + rope_dim, dtype=dtype, device=device)
        self.routing: list[torch.Tensor] = []  # experts chosen per forward, [s, b, k] each

    def store(self, c: torch.Tensor, k_rope: torch.Tensor) -> None:
        """c [s, b, r], k_rope [s, b, rope]: the new tokens' latents into their slots."""
        start, s = self.owner.length, c.shape[0]
        if start + s > self.keys.shape[1]:
            raise ValueError(f"KV cache overflow: {start + s} tokens > capacity {self.keys.shape[1]}")
        new = self.keys[:, start:start + s]
        new[..., :self.rank] = c.transpose(0, 1)
        new[..., self.rank:] = k_rope.transpose(0, 1)

    def append(self, c: torch.Tensor, k_rope: torch.Tensor):
        """store(), then (cached [latent | k_rope] so far [b, L, r + rope], attention mask [b, s, L]
        (True = attend) for the new queries). For decoding steps (s x L, s small); a prompt's first
        forward attends through `owner.prompt_documents` instead (no s x s mask)."""
        self.store(c, k_rope)
        return self.keys[:, :self.owner.length + c.shape[0]], self.owner.mask(c.shape[0])

    def record_routing(self, idx: torch.Tensor) -> None:
        self.routing.append(idx)


class KVCache:
    def __init__(self, layer_ids: Iterable[int], batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 valid: torch.Tensor, dtype: torch.dtype, device: torch.device):
        self.length = 0
        self.valid = valid  # [b, max_len] bool
        self.layers = {i: LayerCache(self, batch, max_len, kv_lora_rank, rope_dim, dtype, device) for i in layer_ids}
        self._mask = None  # (length, s, mask) of the current forward, shared by its layers
        self._blocked = None

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def mask(self, s: int) -> torch.Tensor:
        """[b, s, length + s] for queries at slots length..length+s-1: causal over valid slots; a pad
        query sees itself (its row stays finite). Built once per forward, shared by all layers."""
        if self._mask is None or self._mask[:2] != (self.length, s):
            start, end = self.length, self.length + s
            slots = torch.arange(end, device=self.valid.device)
            query = slots[start:, None]
            allowed = (slots[None, :] <= query)[None] & self.valid[:, None, :end]
            allowed |= (slots[None, :] == query)[None]
            self._mask = (start, s, allowed)
        return self._mask[2]

    def advance(self, s: int) -> None:
        self.length += s

    def blocked(self, allowed: torch.Tensor) -> torch.Tensor:
        """~allowed[:, None] (the attention scores' fill mask), built once per forward for its layers."""
        if self._blocked is None or self._blocked[0] is not allowed:
            self._blocked = (allowed, ~allowed[:, None])
        return self._blocked[1]

    def prompt_documents(self, s: int):
        """Document ids [b, s] of a first forward of s > 1 tokens (the prompt), else None: that forward
        attends like training (block kernel over document ids, O(s) memory), not through an s x s mask."""
        return prompt_documents(self.valid, self.length, s)

    def values_per_token_per_layer(self) -> int:
        return next(iter(self.layers.values())).keys.shape[-1]

    def routing(self) -> dict[int, torch.Tensor]:
        """{layer: experts [tokens so far, b, k]} for the MoE layers."""
        return {i: torch.cat(c.routing) for i, c in self.layers.items() if c.routing}

    def nbytes(self) -> int:
        return sum(c.keys.numel() * c.keys.element_size() for c in self.layers.values())


class PagedLatentLayer:
    """One layer of the paged latent cache (`inference/paged_cache.py`) as MLA sees it: the same
    store / append / record_routing as `LayerCache`, over block storage [slots, kv_lora_rank + rope]."""

    def __init__(self, owner, storage: list[torch.Tensor], layer: int):
        self.owner, self.keys, self.layer = owner, storage[0], layer

    def store(self, c: torch.Tensor, k_rope: torch.Tensor) -> None:
        """c [s, b, r], k_rope [s, b, rope] into the new tokens' slots (pads into the null block)."""
        new = torch.cat([c, k_rope], -1).flatten(0, 1)
        self.keys.index_copy_(0, self.owner.write, new if new.dtype == self.keys.dtype else new.to(self.keys.dtype))

    def append(self, c: torch.Tensor, k_rope: torch.Tensor):
        """store(), then (each row's cached [latent | k_rope] [b, L, r + rope], mask [b, s, L])."""
        self.store(c, k_rope)
        read = self.owner.slots_read()  # index_select: ~4x faster than advanced indexing on CPU
        return self.keys.index_select(0, read.flatten()).view(*read.shape, -1), self.owner.mask()

    def record_routing(self, idx: torch.Tensor) -> None:
        self.owner.routing[self.layer] = idx


def paged_latent_layout(layer_ids: Iterable[int], kv_lora_rank: int, rope_dim: int):
    """(features stored per token per layer, layer view) of MLA's paged cache."""
    return {i: [(kv_lora_rank + rope_dim,)] for i in layer_ids}, PagedLatentLayer
