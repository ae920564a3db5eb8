"""Qwen3-MoE parameter counts and training FLOPs from the config alone (no weights); the tests check
them against transformers' model and the published shapes' configs."""
from __future__ import annotations

from r1mega.models.dense.params import count_params as dense_count
from r1mega.models.qwen3_moe.config import Qwen3MoeConfig


def kind_params(c: Qwen3MoeConfig, moe: bool) -> tuple[int, int]:
    """(total, activated) parameters of one dense-MLP or MoE decoder layer (norms included)."""
    D = c.hidden_size
    base = dense_count(c.attention_view())["attention"] + 2 * D
    if not moe:
        return base + 3 * D * c.intermediate_size, base + 3 * D * c.intermediate_size
    expert, router = 3 * D * c.moe_intermediate_size, c.num_experts * D
    return base + router + c.num_experts * expert, base + router + c.num_experts_per_tok * expert


def count_params(c: Qwen3MoeConfig) -> dict[str, int]:
    moe = c.moe_layers()
    (dense_total, dense_active), (moe_total, moe_active) = kind_params(c, False), kind_params(c, True)
    emb = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2) + c.hidden_size
    dense = c.num_layers - moe
    return {"total": emb + dense * dense_total + moe * moe_total,
            "active": emb + dense * dense_active + moe * moe_active, "mtp": 0}


def flops_per_token(c: Qwen3MoeConfig, seq_length: int) -> float:
    """6 x activated matmul parameters + causal attention scores (QK^T and AV, halved by the mask, fwd+bwd)."""
    attn = 6 * c.num_layers * seq_length * c.num_heads * 2 * c.head_size / 2
    return 6.0 * count_params(c)["active"] + attn
