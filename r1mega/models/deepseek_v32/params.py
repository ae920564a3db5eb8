"""DeepSeek-V3.2 parameter counts and FLOPs from the config alone: DeepSeek-V3's plus the indexer,
and attention that stops growing with the context past index_topk."""
from __future__ import annotations

from r1mega.models.deepseek_v3 import params as v3


def indexer_params(c) -> int:
    """wq_b, wk, k_norm (LayerNorm weight and bias), weights_proj, per layer."""
    H, d = c.index_n_heads, c.index_head_dim
    return c.q_lora_rank * H * d + c.hidden_size * d + 2 * d + c.hidden_size * H


def count_params(c) -> dict[str, int]:
    out = v3.count_params(c)
    extra = c.num_layers * indexer_params(c)
    return {"total": out["total"] + extra, "active": out["active"] + extra,
            "mtp": out["mtp"] + c.num_mtp_layers * indexer_params(c), "indexer": extra}


def attention_flops_per_token(c, seq_length: int, sparse: bool = True) -> float:
    """Training FLOPs per token (fwd + bwd = 3x forward) of attention scores and the indexer, averaged
    over the positions of a causal sequence. Dense MLA: QK^T and AV over on average s/2 keys per
    head. DSA: the same over min(position, top-k) keys, plus the indexer's heads x d products with
    every preceding key (cheap per key, FP8 in DeepSeek's kernel, but still O(s); its backward
    only runs in the indexer's own loss, counted here as 3x too)."""
    s, k = seq_length, c.index_topk
    per_key = 2 * c.num_heads * (c.qk_head_dim + c.v_head_dim)
    if not sparse or s <= k:
        keys = s / 2
    else:  # positions < k see all earlier keys, the rest k
        keys = (k * k / 2 + (s - k) * k) / s
    attn = 3 * c.num_layers * per_key * keys
    if sparse:
        attn += 3 * c.num_layers * 2 * c.index_n_heads * c.index_head_dim * s / 2
    return attn


def flops_per_token(c, seq_length: int) -> float:
    return 6.0 * count_params(c)["active"] + attention_flops_per_token(c, seq_length)
