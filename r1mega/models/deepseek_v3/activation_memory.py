"""DeepSeek-V3's activation memory per token and layer, measured by running one dense and one MoE
decoder layer (r1mega/models/activation_memory.py records what they leave for backward): the
family's share of `r1mega plan`'s activation term (models/deepseek_v3/plan.py)."""
from __future__ import annotations

import torch

from r1mega.models.activation_memory import saved_bytes


def _layer_bytes_per_token(m, recompute: str, modules, tokens: int) -> dict[str, float]:
    """Measured bytes per token a dense and a MoE decoder layer of config `m` hold for backward."""
    from r1mega.models.deepseek_v3.model import DecoderLayer
    from r1mega.models.rope import RotaryEmbedding
    from r1mega.parallel.layout import single_process_state
    from r1mega.parallel.recompute import set_recompute

    ps = single_process_state()
    rope = RotaryEmbedding(m.qk_rope_head_dim, m.rope_theta, m.rope_scaling, m.max_position_embeddings,
                           m.rope_interleave)
    cos, sin = rope.cos_sin(torch.arange(tokens))
    out = {}
    kinds = {"dense": 0} if m.n_routed_experts == 0 else {"dense": 0, "moe": max(m.first_k_dense_replace, 0)}
    for kind, idx in kinds.items():
        if kind == "dense" and m.n_routed_experts and m.first_k_dense_replace == 0:
            continue
        layer = DecoderLayer(m, ps, idx).train()
        set_recompute(layer, recompute, modules)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.05, generator=g)
        h = torch.randn(tokens, 1, m.hidden_size, generator=g, requires_grad=True)
        out[kind] = saved_bytes(lambda: layer(h, rope, cos, sin).sum(), layer) / tokens
    return out


def layer_activation_bytes(m, recompute: str = "none", modules=None, tokens: int = 64) -> dict[str, float]:
    """Bytes per token per layer held for backward ({"dense": .., "moe": ..}) for model config `m`
    at float32 and tp = 1, *measured* by running one layer of each kind.

    A full-width layer of a large model does not fit a quick CPU run, so the layer is measured at
    two narrower widths: every width (hidden, LoRA ranks, heads, FFN sizes, expert count) divided
    by f and by f/2. Each saved tensor's per-token size is either proportional to a width or
    constant (top-k weights, norm statistics), so bytes(f) = A / f + C, solved from the two runs
    and read at f = 1. Tiny configs (f = 1) are measured as they are."""
    from dataclasses import replace

    from r1mega.models.deepseek_v3.config import RECOMPUTE_UNITS

    modules = list(RECOMPUTE_UNITS if modules is None else modules)
    moe = m.n_routed_experts > 0

    def widths_ok(f: int) -> bool:
        dims = [m.hidden_size, m.kv_lora_rank, m.num_heads, m.intermediate_size]
        dims += [m.q_lora_rank] if m.q_lora_rank else []
        dims += [m.moe_intermediate_size, m.n_routed_experts] if moe else []
        return all(d % f == 0 for d in dims) and (not moe or m.n_routed_experts // f >= m.num_experts_per_tok)

    f = 1
    while f < 64 and widths_ok(2 * f):
        f *= 2

    def scaled(k: int):
        return replace(m, hidden_size=m.hidden_size // k, kv_lora_rank=m.kv_lora_rank // k,
                       q_lora_rank=m.q_lora_rank // k if m.q_lora_rank else m.q_lora_rank,
                       num_heads=m.num_heads // k, intermediate_size=m.intermediate_size // k,
                       moe_intermediate_size=m.moe_intermediate_size // k if moe else m.moe_intermediate_size,
                       n_routed_experts=m.n_routed_experts // k if moe else 0, n_group=1, topk_group=1,
                       num_layers=2, first_k_dense_replace=min(m.first_k_dense_replace, 1), num_mtp_layers=0)

    if f == 1:
        return _layer_bytes_per_token(scaled(1), recompute, modules, tokens)
    narrow, wide = (_layer_bytes_per_token(scaled(k), recompute, modules, tokens) for k in (f, f // 2))
    # bytes(k) = A / k + C  =>  A = (wide - narrow) * f,  bytes(1) = A + C = narrow + A (1 - 1 / f)
    return {kind: narrow[kind] + (wide[kind] - narrow[kind]) * f * (1 - 1 / f) for kind in narrow}
