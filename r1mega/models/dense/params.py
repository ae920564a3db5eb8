"""Dense-student parameter counts and training FLOPs from the config alone (no weights)."""
from __future__ import annotations

from r1mega.config import DenseConfig


def count_params(c: DenseConfig) -> dict[str, int]:
    """GQA attention, SwiGLU, RMSNorm; `tests/test_students.py` checks it against the model."""
    D, hd = c.hidden_size, c.head_size
    q, kv = c.num_heads * hd, c.num_kv_heads * hd
    attn = D * q + 2 * D * kv + q * D + ((q + 2 * kv) if c.qkv_bias else 0) + (D if c.o_bias else 0)
    attn += 2 * hd if c.qk_norm else 0  # Qwen3's per-head q/k norm weights
    layer = attn + 3 * D * c.intermediate_size + 2 * D
    emb = c.vocab_size * D * (1 if c.tie_word_embeddings else 2)
    total = emb + c.num_layers * layer + D
    return {"total": total, "active": total, "mtp": 0, "per_layer": layer, "attention": attn}


def flops_per_token(c: DenseConfig, seq_length: int) -> float:
    """6 x matmul parameters + causal attention scores (QK^T and AV, halved by the mask, fwd+bwd)."""
    attn = 6 * c.num_layers * seq_length * c.num_heads * 2 * c.head_size / 2
    return 6.0 * count_params(c)["total"] + attn
