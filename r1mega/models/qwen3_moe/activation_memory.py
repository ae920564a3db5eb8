"""Qwen3-MoE's activation memory per token and layer, measured by running one dense-MLP and one MoE
decoder layer (r1mega/models/activation_memory.py records what they leave for backward): the
family's share of `r1mega plan`'s activation term (plan.py here). As DeepSeek-V3's measurement
(models/deepseek_v3/activation_memory.py), a large model is measured at two narrower widths and read
at full width: every width (hidden, heads, KV heads, FFN sizes, expert count) divided by f and f/2,
bytes(f) = A / f + C solved from the two runs (head_dim and top-k stay: per-head and per-choice
sizes are constants of C or scale with the head count)."""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, replace

import torch

from r1mega.models.activation_memory import saved_bytes
from r1mega.models.qwen3_moe.config import Qwen3MoeConfig


def _kinds(m: Qwen3MoeConfig) -> dict[str, bool]:
    moe = m.moe_layers()
    return {k: present for k, present in (("dense", moe < m.num_layers), ("moe", moe > 0)) if present}


def _layer_bytes_per_token(m: Qwen3MoeConfig, recompute: str, modules, tokens: int) -> dict[str, float]:
    from r1mega.models.qwen3_moe.model import Qwen3MoeDecoderLayer
    from r1mega.models.rope import RotaryEmbedding
    from r1mega.parallel.layout import single_process_state
    from r1mega.parallel.recompute import set_recompute

    ps = single_process_state()
    rope = RotaryEmbedding(m.head_size, m.rope_theta, m.rope_scaling, m.max_position_embeddings, interleave=False)
    cos, sin = rope.cos_sin(torch.arange(tokens))
    two = replace(m, num_layers=2, mlp_only_layers=[0], decoder_sparse_step=1)  # layer 0 dense, layer 1 MoE
    out = {}
    for kind in _kinds(m):
        layer = Qwen3MoeDecoderLayer(two, ps, 0 if kind == "dense" else 1).train()
        set_recompute(layer, recompute, modules)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.05, generator=g)
        h = torch.randn(tokens, 1, m.hidden_size, generator=g, requires_grad=True)
        out[kind] = saved_bytes(lambda: layer(h, rope, cos, sin).sum(), layer) / tokens
    return out


def layer_activation_bytes(m: Qwen3MoeConfig, recompute: str = "none", modules=None,
                           tokens: int = 64) -> dict[str, float]:
    """Bytes per token per layer held for backward ({"dense": .., "moe": ..}, the kinds the model has)
    at float32 and tp = 1, measured."""
    from r1mega.models.qwen3_moe.config import RECOMPUTE_UNITS

    modules = list(RECOMPUTE_UNITS if modules is None else modules)
    moe = m.moe_layers() > 0

    def widths_ok(f: int) -> bool:
        dims = [m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size]
        dims += [m.moe_intermediate_size, m.num_experts] if moe else []
        return all(d % f == 0 for d in dims) and (not moe or m.num_experts // f >= m.num_experts_per_tok)

    f = 1
    while f < 64 and widths_ok(2 * f):
        f *= 2

    def scaled(k: int) -> Qwen3MoeConfig:
        return replace(m, hidden_size=m.hidden_size // k, num_heads=m.num_heads // k, num_kv_heads=m.num_kv_heads // k,
                       head_dim=m.head_size, intermediate_size=m.intermediate_size // k,
                       moe_intermediate_size=m.moe_intermediate_size // k if moe else m.moe_intermediate_size,
                       num_experts=m.num_experts // k if moe else m.num_experts)

    if f == 1:
        return _layer_bytes_per_token(m, recompute, modules, tokens)
    narrow, wide = (_layer_bytes_per_token(scaled(k), recompute, modules, tokens) for k in (f, f // 2))
    return {kind: narrow[kind] + (wide[kind] - narrow[kind]) * f * (1 - 1 / f) for kind in narrow}


@functools.lru_cache(maxsize=32)
def _cached(key: str, recompute: str, modules) -> dict[str, float]:
    return layer_activation_bytes(Qwen3MoeConfig(**json.loads(key)), recompute, modules)


def measured(m: Qwen3MoeConfig, recompute: str, modules) -> dict[str, float]:
    """layer_activation_bytes, kept per (architecture, recompute mode, modules)."""
    key = json.dumps({k: v for k, v in asdict(m).items() if k != "family"}, sort_keys=True)
    return _cached(key, recompute, tuple(modules) if modules is not None else None)
