"""Qwen3-MoE's share of `r1mega plan` (the planner is r1mega/plan.py): what one GPU of a stage holds
(attention and dense MLPs split over TP as the dense family's, routed experts over EP x expert-TP),
the activations of one microbatch (measured per layer kind), the EP all-to-all and the per-head rollout KV cache (the dense
family's GQA cache). Layers of a kind hold the same, so they are counted, not visited."""
from __future__ import annotations

from typing import Optional

from r1mega.models.dense import plan as dense_plan
from r1mega.models.qwen3_moe.activation_memory import measured
from r1mega.models.qwen3_moe.config import Qwen3MoeConfig
from r1mega.models.stage import stage_layers


def _moe_count(m: Qwen3MoeConfig, layers: range) -> int:
    if m.num_experts == 0:
        return 0
    step = m.decoder_sparse_step  # layers i with (i + 1) % step == 0, less the listed dense ones
    on_step = (layers.stop // step) - (layers.start // step)
    return on_step - sum(1 for i in m.mlp_only_layers if i in layers and (i + 1) % step == 0)


def stage_params(m: Qwen3MoeConfig, p, stage: int) -> tuple[float, float]:
    """(dense params, expert params) held by one GPU of pipeline stage `stage`."""
    view, D = m.attention_view(), m.hidden_size
    layers = stage_layers(m.num_layers, p.pp, stage, p.pp_layers)
    moe = _moe_count(m, layers)
    # the dense family's per-layer share holds an MLP of intermediate_size; MoE layers swap it for a router
    per_layer = dense_plan.layer_params_held(view, p)
    mlp = 3 * D * m.intermediate_size / p.tp
    dense = len(layers) * per_layer - moe * (mlp - m.num_experts * D)
    if stage == 0:
        dense += m.vocab_size * D / p.tp
    if stage == p.pp - 1:
        dense += D + (m.vocab_size * D / p.tp if not m.tie_word_embeddings or p.pp > 1 else 0)
    expert = moe * m.num_experts * 3 * D * m.moe_intermediate_size / (p.ep * p.expert_tp)
    return dense, expert


def activation_bytes(m: Qwen3MoeConfig, p, stage: int, mb: int, seq: int, act_bytes: int, recompute: str,
                     recompute_modules: Optional[list[str]]) -> float:
    """Activations the stage's layers hold for one microbatch on one GPU, from measured bytes per token
    of each layer kind (activation_memory.py) plus the layer input kept in every mode; tokens split
    by cp, and by tp only under SP (conservatively unsplit otherwise, as DeepSeek-V3's plan); under cp
    the other ranks' gathered keys and values as the dense family's."""
    layers = stage_layers(m.num_layers, p.pp, stage, p.pp_layers)
    moe = _moe_count(m, layers)
    kinds = {k: n for k, n in (("dense", len(layers) - moe), ("moe", moe)) if n}
    per_kind = measured(m, recompute, recompute_modules)
    tokens = mb * seq / p.cp / (p.tp if p.sp and p.tp > 1 else 1)
    total = sum(n * (per_kind[k] + 4 * m.hidden_size) for k, n in kinds.items()) * tokens * act_bytes / 4
    if p.cp > 1 and recompute != "full":
        lh, kv_local = dense_plan.kv_heads_local(m.attention_view(), p)
        total += mb * seq * (p.cp - 1) / p.cp * 2 * m.head_size * (kv_local + lh) * len(layers) * act_bytes
    return total


def family_comm(m: Qwen3MoeConfig, p, stage: int, tokens: float, micro_per_rank: int, weight_bytes: int) -> dict:
    """EP: routed tokens (dispatch + combine, forward + backward); CP: as the dense family's."""
    ring = (p.ep - 1) / p.ep if p.ep > 1 else 0.0
    layers = stage_layers(m.num_layers, p.pp, stage, p.pp_layers)
    routed = tokens / p.tp * m.num_experts_per_tok * m.hidden_size * weight_bytes
    out = dense_plan.family_comm(m.attention_view(), p, stage, tokens, micro_per_rank, weight_bytes)
    return {**out, "ep": 4 * routed * ring * _moe_count(m, layers) * micro_per_rank}


def kv_cache_bytes(m: Qwen3MoeConfig, p, tokens: float, weight_bytes: int) -> dict[str, float]:
    """Keys and values of the KV heads a rank attends with (the dense family's GQA cache)."""
    return dense_plan.kv_cache_bytes(m.attention_view(), p, tokens, weight_bytes)
