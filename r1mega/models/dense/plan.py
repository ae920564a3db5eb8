"""The dense family's share of `r1mega plan` (the planner is r1mega/plan.py): parameters one GPU of
a stage holds (KV heads that do not split over tp are replicated: k/v projections held whole),
activations of one microbatch (GQA attention, SwiGLU) and the per-head rollout KV cache."""
from __future__ import annotations

from typing import Optional

from r1mega.models.dense.config import DenseConfig
from r1mega.models.dense.params import count_params
from r1mega.models.stage import most_stage_layers, stage_layers


def layer_params_held(s: DenseConfig, p) -> float:
    """Parameters of one decoder layer one GPU holds (also the attention half of Qwen3-MoE's layer)."""
    kv_weights = 2 * s.hidden_size * s.num_kv_heads * s.head_size
    replicated = 0 if s.num_kv_heads % p.tp == 0 else kv_weights * (1 - 1 / p.tp)
    return count_params(s)["per_layer"] / p.tp + replicated


def stage_params(s: DenseConfig, p, stage: int) -> tuple[float, float]:
    """(dense params, expert params = 0) held by one GPU of pipeline stage `stage`."""
    layers = stage_layers(s.num_layers, p.pp, stage, p.pp_layers)
    emb = s.vocab_size * s.hidden_size / p.tp
    held = len(layers) * layer_params_held(s, p)
    if stage == 0:
        held += emb
    if stage == p.pp - 1:
        held += s.hidden_size + (emb if not s.tie_word_embeddings or p.pp > 1 else 0)
    return held, 0.0


def kv_heads_local(s: DenseConfig, p) -> tuple[int, int]:
    """(query heads per TP rank, the most KV heads a TP rank attends with)."""
    lh, group = s.num_heads // p.tp, s.num_heads // s.num_kv_heads
    return lh, max((r * lh + lh - 1) // group - (r * lh) // group + 1 for r in range(p.tp))


def activation_bytes(s: DenseConfig, p, stage: int, mb: int, seq: int, act_bytes: int, recompute: str,
                     recompute_modules: Optional[list[str]]) -> float:
    """Activations the stage's layers hold for one microbatch on one GPU (no recompute modelled)."""
    D, hd = s.hidden_size, s.head_size
    tokens = mb * seq / p.cp  # this GPU's tokens: its zigzag chunks under context parallelism
    per_layer = tokens * (4 * D + D + (s.num_heads + 2 * s.num_kv_heads) * hd / p.tp * 2
                          + (D + 3 * s.intermediate_size / p.tp))
    if p.cp > 1:  # the other cp ranks' keys and values: gathered (kv heads), then widened to the query heads
        lh, kv_local = kv_heads_local(s, p)
        per_layer += mb * seq * (p.cp - 1) / p.cp * 2 * hd * (kv_local + lh)
    return per_layer * len(stage_layers(s.num_layers, p.pp, stage, p.pp_layers)) * act_bytes


def family_comm(s: DenseConfig, p, stage: int, tokens: float, micro_per_rank: int, weight_bytes: int) -> dict:
    """CP: every layer all-gathers its rotated K and V in forward, reduce-scatters them in backward."""
    layers = len(stage_layers(s.num_layers, p.pp, stage, p.pp_layers))
    kv_local = kv_heads_local(s, p)[1]
    return {"ep": 0.0, "cp": 2 * tokens * 2 * kv_local * s.head_size * weight_bytes * (p.cp - 1) * layers
            * micro_per_rank}


def kv_cache_bytes(s: DenseConfig, p, tokens: float, weight_bytes: int) -> dict[str, float]:
    """Per-head K and V of the KV heads a rank attends with (GQA), for a GPU caching `tokens` (its
    rows x length) for its stage's layers (the stage holding the most)."""
    kv_local = kv_heads_local(s, p)[1]
    layers = most_stage_layers(s.num_layers, p.pp, p.pp_layers)
    return {"gqa_heads": tokens * layers * weight_bytes * 2 * kv_local * s.head_size}
