"""The rollout KV cache. For MLA it holds, per token and layer, the normalised latent c_kv
(kv_lora_rank values) and the rotated shared RoPE key (qk_rope_head_dim values) - not per-head
keys and values. Sequences are left-padded to a common prompt length and decode in lockstep;
`valid` marks the pad slots that no query may attend to."""
from __future__ import annotations

from typing import Iterable

import torch


class LayerCache:
    def __init__(self, owner: "KVCache", b: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.owner = owner
        self.latent = torch.zeros(b, max_len, kv_lora_rank, dtype=dtype, device=device)
        self.krope = torch.zeros(b, max_len, rope_dim, dtype=dtype, device=device)
        self.routing: list[torch.Tensor] = []  # experts chosen per forward, [s, b, k] each

    def append(self, c: torch.Tensor, k_rope: torch.Tensor):
        """c [s, b, r], k_rope [s, b, rope] -> whole cache so far and the first new slot."""
        start, s = self.owner.length, c.shape[0]
        if start + s > self.latent.shape[1]:
            raise ValueError(f"KV cache overflow: {start + s} tokens > capacity {self.latent.shape[1]}")
        self.latent[:, start:start + s] = c.transpose(0, 1)
        self.krope[:, start:start + s] = k_rope.transpose(0, 1)
        end = start + s
        return self.latent[:, :end], self.krope[:, :end], self.owner.valid[:, :end], start

    def record_routing(self, idx: torch.Tensor) -> None:
        self.routing.append(idx)


class KVCache:
    def __init__(self, layer_ids: Iterable[int], batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 valid: torch.Tensor, dtype: torch.dtype, device: torch.device):
        self.length = 0
        self.valid = valid  # [b, max_len] bool
        self.layers = {i: LayerCache(self, batch, max_len, kv_lora_rank, rope_dim, dtype, device) for i in layer_ids}

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def advance(self, s: int) -> None:
        self.length += s

    def values_per_token_per_layer(self) -> int:
        any_layer = next(iter(self.layers.values()))
        return any_layer.latent.shape[-1] + any_layer.krope.shape[-1]

    def routing(self) -> dict[int, torch.Tensor]:
        """{layer: experts [tokens so far, b, k]} for the MoE layers."""
        return {i: torch.cat(c.routing) for i, c in self.layers.items() if c.routing}

    def nbytes(self) -> int:
        return sum(c.latent.numel() * c.latent.element_size() + c.krope.numel() * c.krope.element_size()
                   for c in self.layers.values())
