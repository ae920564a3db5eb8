"""DeepSeek-V3's share of `r1mega plan` (the planner is r1mega/plan.py): what one GPU of a pipeline
stage holds (dense and expert parameters), the activations one microbatch leaves for backward
(measured per layer kind, activation_memory.py here), the communication only this family does
(EP all-to-all, the CP latent all-gather) and the MLA rollout cache. Layers of a kind hold the same,
so they are counted, not visited: any num_layers costs the same."""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, fields
from typing import Optional

from r1mega.models.deepseek_v3.activation_memory import layer_activation_bytes
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v3.params import attention_params, kind_params, moe_layer_count
from r1mega.models.stage import most_stage_layers, stage_layers


def stage_layer_kinds(m: ModelConfig, p, stage: int) -> tuple[range, int]:
    """(the decoder layers of pipeline stage `stage`, how many MTP modules it holds: the last's)."""
    return stage_layers(m.num_layers, p.pp, stage, p.pp_layers), m.num_mtp_layers if stage == p.pp - 1 else 0


def stage_params(m: ModelConfig, p, stage: int) -> tuple[float, float]:
    """(dense params, expert params) held by one GPU of pipeline stage `stage`."""
    D, V = m.hidden_size, m.vocab_size
    layers, mtp = stage_layer_kinds(m, p, stage)
    # MTP module k's layer is index num_layers + k
    moe = moe_layer_count(m, layers) + moe_layer_count(m, range(m.num_layers, m.num_layers + mtp))
    n_dense = len(layers) + mtp - moe
    e_all = m.n_routed_experts * 3 * D * m.moe_intermediate_size
    expert = moe * (e_all / (p.ep * p.expert_tp))
    shared = m.n_shared_experts * 3 * D * m.moe_intermediate_size
    dense = moe * (attention_params(m) / p.tp + shared / p.tp + m.n_routed_experts * D + 2 * D)
    dense += n_dense * ((kind_params(m, False)[0] - 2 * D) / p.tp + 2 * D)
    if stage == 0:
        dense += V * D / p.tp
    if stage == p.pp - 1:
        dense += V * D / p.tp + D
        if m.num_mtp_layers:
            dense += m.num_mtp_layers * (2 * D * D + 3 * D)
            if p.pp > 1:
                dense += V * D / p.tp  # the embedding copy MTP keeps on the last stage
    return dense, expert


def activation_bytes(m: ModelConfig, p, stage: int, mb: int, seq: int, act_bytes: int, recompute: str,
                     recompute_modules: Optional[list[str]]) -> float:
    """Activations the stage's decoder layers and MTP modules hold for one microbatch on one GPU,
    from measured bytes per token (per layer kind, times the layers of that kind)."""
    layers, mtp = stage_layer_kinds(m, p, stage)
    measured = _measured(m, recompute, recompute_modules)
    tokens = mb * seq / p.cp / (p.tp if p.sp and p.tp > 1 else 1)  # without SP, conservatively unsplit
    moe = moe_layer_count(m, layers) + (mtp if m.n_routed_experts else 0)  # MTP modules carry a MoE layer
    kinds = {k: n for k, n in (("dense", len(layers) + mtp - moe), ("moe", moe)) if n}
    n_layers = sum(kinds.values())
    # + the layer input, kept in every mode
    per_token = sum(n * (measured[k] + 4 * m.hidden_size) for k, n in kinds.items())
    total = per_token * tokens
    if p.cp > 1 and recompute != "full":
        # Keys of the other cp ranks' tokens are held too: per-head K/V from the gathered latent,
        # or only the latent when the up-projections are recomputed.
        others = mb * seq * (p.cp - 1) / p.cp
        up_recomputed = recompute == "selective" and "mla_up_proj" in (recompute_modules or ["mla_up_proj"])
        width = ((m.kv_lora_rank + m.qk_rope_head_dim) if up_recomputed else
                 m.num_heads / p.tp * (m.qk_head_dim + m.v_head_dim) + m.kv_lora_rank + m.qk_rope_head_dim)
        total += others * width * 4 * n_layers
    return total * act_bytes / 4  # measured in float32


def recompute_transient_bytes(m: ModelConfig, p, stage: int, mb: int, seq: int, act_bytes: int, recompute: str,
                              recompute_modules: Optional[list[str]]) -> float:
    """What full recompute adds while a backward re-runs a layer: that layer's activations (the stage's
    largest kind, and under cp the other ranks' keys), for one microbatch at a time, not per microbatch
    in flight. 0 in the other modes (their activations are held per microbatch, activation_bytes)."""
    layers, mtp = stage_layer_kinds(m, p, stage)
    moe = moe_layer_count(m, layers) + (mtp if m.n_routed_experts else 0)
    kinds = [k for k, n in (("dense", len(layers) + mtp - moe), ("moe", moe)) if n]
    if recompute != "full" or not kinds:
        return 0.0
    none = _measured(m, "none", None)
    tokens = mb * seq / p.cp / (p.tp if p.sp and p.tp > 1 else 1)
    total = max(none[k] for k in kinds) * tokens
    if p.cp > 1:
        width = m.num_heads / p.tp * (m.qk_head_dim + m.v_head_dim) + m.kv_lora_rank + m.qk_rope_head_dim
        total += mb * seq * (p.cp - 1) / p.cp * width * 4
    return total * act_bytes / 4


@functools.lru_cache(maxsize=32)
def _measured_cached(key: str, recompute: str, modules: Optional[tuple]) -> dict[str, float]:
    return layer_activation_bytes(ModelConfig(**json.loads(key)), recompute, modules)


def _measured(m: ModelConfig, recompute: str, modules: Optional[list[str]]) -> dict[str, float]:
    """Measured on DeepSeek-V3's layers (a V3.2 config is measured without its indexer)."""
    own = {f.name for f in fields(ModelConfig)} - {"family"}
    key = json.dumps({k: v for k, v in asdict(m).items() if k in own}, sort_keys=True)
    return _measured_cached(key, recompute, tuple(modules) if modules is not None else None)


def family_comm(m: ModelConfig, p, stage: int, tokens: float, micro_per_rank: int, weight_bytes: int) -> dict:
    """Bytes one GPU sends per step for EP (routed tokens: dispatch + combine, forward + backward)
    and CP (every layer all-gathers its [c_kv | k_rope] latent in forward, reduce-scatters in backward)."""
    ring = lambda n: (n - 1) / n if n > 1 else 0.0  # noqa: E731
    layers = stage_layers(m.num_layers, p.pp, stage, p.pp_layers)
    routed = tokens / p.tp * m.num_experts_per_tok * m.hidden_size * weight_bytes
    latent = tokens * (m.kv_lora_rank + m.qk_rope_head_dim) * weight_bytes
    return {"ep": 4 * routed * ring(p.ep) * moe_layer_count(m, layers) * micro_per_rank,
            "cp": 2 * latent * (p.cp - 1) * len(layers) * micro_per_rank}


def kv_cache_bytes(m: ModelConfig, p, tokens: float, weight_bytes: int) -> dict[str, float]:
    """Rollout KV cache of a GPU caching `tokens` (its rows x length) for its stage's layers (the
    stage holding the most): MLA's shared latent (replicated over TP) beside what full per-head keys
    and values (split by heads) would take."""
    n = tokens * most_stage_layers(m.num_layers, p.pp, p.pp_layers) * weight_bytes
    return {"mla_latent": n * (m.kv_lora_rank + m.qk_rope_head_dim),
            "full_heads": n * m.num_heads * (m.qk_head_dim + m.v_head_dim) / p.tp}
