"""Parameter counts from the config alone (no weights): total, activated per token, MTP.

`tests/test_params.py` checks these against the parameters an instantiated model holds.
"""
from __future__ import annotations

from r1mega.config import ModelConfig


def attention_params(c: ModelConfig) -> int:
    D, H = c.hidden_size, c.num_heads
    q = (D * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim) if c.q_lora_rank \
        else D * H * c.qk_head_dim
    kv = D * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    o = H * c.v_head_dim * D
    bias = (c.q_lora_rank or 0) + c.kv_lora_rank + c.qk_rope_head_dim + D if c.attention_bias else 0
    return q + kv + o + bias


def layer_params(c: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, activated) parameters of decoder layer `layer` (norms included)."""
    D = c.hidden_size
    base = attention_params(c) + 2 * D
    if not c.is_moe_layer(layer):
        ffn = 3 * D * c.intermediate_size
        return base + ffn, base + ffn
    expert = 3 * D * c.moe_intermediate_size
    shared = c.n_shared_experts * expert
    router = c.n_routed_experts * D
    total = base + router + shared + c.n_routed_experts * expert
    active = base + router + shared + c.num_experts_per_tok * expert
    return total, active


def mtp_params(c: ModelConfig) -> int:
    """MTP modules (embedding and head are shared with the main model)."""
    D = c.hidden_size
    per = layer_params(c, c.num_layers)[0] + 2 * D + 2 * D * D + D
    return c.num_mtp_layers * per


def count_params(c: ModelConfig) -> dict[str, int]:
    D, V = c.hidden_size, c.vocab_size
    emb_head = 2 * V * D
    layers = [layer_params(c, i) for i in range(c.num_layers)]
    total = emb_head + D + sum(t for t, _ in layers)
    active = emb_head + D + sum(a for _, a in layers)
    return {"total": total, "active": active, "mtp": mtp_params(c)}


def flops_per_token(c: ModelConfig, seq_length: int) -> float:
    """Training FLOPs per token: 6 x activated matmul parameters + causal attention scores."""
    # QK^T and AV: 2 x s x heads x (qk + v) multiply-adds per token, halved by the causal mask, x3 for fwd+bwd
    attn = 6 * c.num_layers * seq_length * c.num_heads * (c.qk_head_dim + c.v_head_dim) / 2
    return 6.0 * count_params(c)["active"] + attn
