"""Parameter counts from the config alone (no weights): total, activated per token, MTP.

`tests/test_params.py` checks these against the parameters an instantiated model holds.
"""
from __future__ import annotations

from r1mega.models.deepseek_v3.config import ModelConfig


def attention_params(c: ModelConfig) -> int:
    D, H = c.hidden_size, c.num_heads
    q = ((D * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim) if c.q_lora_rank
         else D * H * c.qk_head_dim)
    kv = D * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    o = H * c.v_head_dim * D
    bias = (c.q_lora_rank or 0) + c.kv_lora_rank + c.qk_rope_head_dim + D if c.attention_bias else 0
    return q + kv + o + bias


def moe_layer_count(c: ModelConfig, layers: range) -> int:
    """How many of the consecutive layer indices `layers` are MoE layers (c.is_moe_layer), in O(1):
    the multiples of moe_layer_freq from first_k_dense_replace on. Counting by kind keeps counts and
    plans instant for any num_layers."""
    lo, hi = max(layers.start, c.first_k_dense_replace), layers.stop
    if c.n_routed_experts <= 0 or lo >= hi:
        return 0
    f = c.moe_layer_freq
    return (hi - 1) // f - (lo - 1) // f


def kind_params(c: ModelConfig, moe: bool) -> tuple[int, int]:
    """(total, activated) parameters of one dense or MoE decoder layer (norms included)."""
    D = c.hidden_size
    base = attention_params(c) + 2 * D
    if not moe:
        ffn = 3 * D * c.intermediate_size
        return base + ffn, base + ffn
    expert = 3 * D * c.moe_intermediate_size
    shared = c.n_shared_experts * expert
    router = c.n_routed_experts * D
    total = base + router + shared + c.n_routed_experts * expert
    active = base + router + shared + c.num_experts_per_tok * expert
    return total, active


def layer_params(c: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, activated) parameters of decoder layer `layer` (norms included)."""
    return kind_params(c, c.is_moe_layer(layer))


def mtp_params(c: ModelConfig) -> int:
    """MTP modules (embedding and head are shared with the main model)."""
    D = c.hidden_size
    per = layer_params(c, c.num_layers)[0] + 2 * D + 2 * D * D + D
    return c.num_mtp_layers * per


def count_params(c: ModelConfig) -> dict[str, int]:
    D, V = c.hidden_size, c.vocab_size
    emb_head = 2 * V * D
    moe = moe_layer_count(c, range(c.num_layers))
    (dense_total, dense_active), (moe_total, moe_active) = kind_params(c, False), kind_params(c, True)
    total = emb_head + D + (c.num_layers - moe) * dense_total + moe * moe_total
    active = emb_head + D + (c.num_layers - moe) * dense_active + moe * moe_active
    return {"total": total, "active": active, "mtp": mtp_params(c)}


def flops_per_token(c: ModelConfig, seq_length: int) -> float:
    """Training FLOPs per token: 6 x activated matmul parameters + causal attention scores."""
    # QK^T and AV: 2 x s x heads x (qk + v) multiply-adds per token, halved by the causal mask, x3 for fwd+bwd
    attn = 6 * c.num_layers * seq_length * c.num_heads * (c.qk_head_dim + c.v_head_dim) / 2
    return 6.0 * count_params(c)["active"] + attn
