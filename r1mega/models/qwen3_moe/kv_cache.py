"""Qwen3-MoE's rollout KV cache: the dense family's per-head cache (keys and values of the KV heads a
TP rank attends with), whose layers also record the experts each MoE layer chose (routing replay,
`rl.routing_replay`), as the DeepSeek latent cache's do."""
from __future__ import annotations

from typing import Iterable

import torch

from r1mega.models.dense.kv_cache import HeadsKVCache, HeadsLayerCache, PagedHeadsLayer


class RoutedHeadsLayerCache(HeadsLayerCache):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.routing: list[torch.Tensor] = []  # experts chosen per forward, [s, b, k] each

    def record_routing(self, idx: torch.Tensor) -> None:
        self.routing.append(idx)


class RoutedHeadsKVCache(HeadsKVCache):
    def __init__(self, layer_ids: Iterable[int], batch: int, max_len: int, kv_heads: int, head_dim: int,
                 valid: torch.Tensor, dtype: torch.dtype, device: torch.device):
        self.length = 0
        self.valid = valid  # [b, max_len] bool
        self.layers = {i: RoutedHeadsLayerCache(self, batch, max_len, kv_heads, head_dim, dtype, device)
                       for i in layer_ids}

    def routing(self) -> dict[int, torch.Tensor]:
        """{layer: experts [tokens so far, b, k]} for the MoE layers."""
        return {i: torch.cat(c.routing) for i, c in self.layers.items() if c.routing}


class RoutedPagedHeadsLayer(PagedHeadsLayer):
    """A layer of the paged cache (`inference/paged_cache.py`): keys and values, and this forward's experts."""

    def __init__(self, owner, storage: list[torch.Tensor], layer: int):
        super().__init__(owner, storage, layer)
        self.layer = layer

    def record_routing(self, idx: torch.Tensor) -> None:
        self.owner.routing[self.layer] = idx


def paged_routed_heads_layout(layer_ids: Iterable[int], kv_heads: int, head_dim: int):
    """(features stored per token per layer, layer view) of the paged cache."""
    return {i: [(kv_heads, head_dim), (kv_heads, head_dim)] for i in layer_ids}, RoutedPagedHeadsLayer
