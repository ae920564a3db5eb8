"""The DeepSeek-V3.2 family as the engine sees it (see r1mega/models/family.py for the protocol):
DeepSeek-V3's rules, weights, training hooks and plan, with the indexer's keys, parameters and cache.
Model code is imported when first used, so reading a config does not load it."""
from __future__ import annotations

from r1mega.models.deepseek_v3 import spec as v3
from r1mega.models.deepseek_v3.config import validate_layout
from r1mega.models.deepseek_v32.config import FAMILY as NAME, RECOMPUTE_UNITS, DSAConfig, validate_keys
from r1mega.models.deepseek_v32.training import DSATraining
from r1mega.models.spec import ModelFamily


def _stage(*args, **kwargs):
    from r1mega.models.deepseek_v32.model import DeepseekV32

    return DeepseekV32(*args, **kwargs)


def _planner():
    from r1mega.models.deepseek_v32 import plan

    return plan


def _count_params(cfg: DSAConfig) -> dict:
    from r1mega.models.deepseek_v32.params import count_params

    return count_params(cfg)


def _flops_per_token(cfg: DSAConfig, seq_length: int) -> float:
    from r1mega.models.deepseek_v32.params import flops_per_token

    return flops_per_token(cfg, seq_length)


FP8_INDEXER = ("indexer.wq_b.weight", "indexer.wk.weight")  # FP8 like the *_proj weights; weights_proj is not


def hf_fp8(key: str) -> bool:
    """DeepSeek-V3's FP8 linears (see its hf_fp8) and the indexer's query/key projections; the
    indexer's head weights stay in high precision."""
    return key.endswith(FP8_INDEXER) or (v3.hf_fp8(key) and not key.endswith("indexer.weights_proj.weight"))


FAMILY = ModelFamily(
    name=NAME, hf_model_types=("deepseek_v32",), config_cls=DSAConfig,
    validate_keys=validate_keys, validate_layout=validate_layout, stage_cls=_stage, gather_full=v3.FAMILY.gather_full,
    count_params=_count_params, plan_module=_planner, flops_per_token=_flops_per_token,
    kv_cache="mla_latent+index_keys", routed_experts=v3.FAMILY.routed_experts, training_keys=DSAConfig.training_keys, recompute_units=RECOMPUTE_UNITS,
    fp32_params=v3.FAMILY.fp32_params, draft_refusal=v3.FAMILY.draft_refusal,
    hf_optional=v3.FAMILY.hf_optional, hf_may_lack=v3.FAMILY.hf_may_lack, hf_fp8=hf_fp8, training=DSATraining())
