"""The Qwen3-MoE family as the engine sees it (see r1mega/models/family.py for the protocol).
Model code is imported when first used, so reading a config does not load it."""
from __future__ import annotations

from r1mega.models.qwen3_moe.config import (
    FAMILY as NAME, HF_MODEL_TYPE, RECOMPUTE_UNITS, Qwen3MoeConfig, validate_keys, validate_layout,
)
from r1mega.models.qwen3_moe.training import Qwen3MoeTraining
from r1mega.models.spec import ModelFamily


def _stage(*args, **kwargs):
    from r1mega.models.qwen3_moe.model import Qwen3Moe

    return Qwen3Moe(*args, **kwargs)


def _planner():
    from r1mega.models.qwen3_moe import plan

    return plan


def _count_params(cfg: Qwen3MoeConfig) -> dict:
    from r1mega.models.qwen3_moe.params import count_params

    return count_params(cfg)


def _flops_per_token(cfg: Qwen3MoeConfig, seq_length: int) -> float:
    from r1mega.models.qwen3_moe.params import flops_per_token

    return flops_per_token(cfg, seq_length)


FAMILY = ModelFamily(
    name=NAME, hf_model_types=(HF_MODEL_TYPE,), config_cls=Qwen3MoeConfig,
    validate_keys=validate_keys, validate_layout=validate_layout, stage_cls=_stage,
    gather_full=lambda stage, grads=False: stage.gather_full(grads),
    count_params=_count_params, plan_module=_planner, flops_per_token=_flops_per_token, kv_cache="heads",
    routed_experts=lambda m: m.num_experts if m.moe_layers() else 0,
    training_keys=Qwen3MoeConfig.training_keys, recompute_units=RECOMPUTE_UNITS, training=Qwen3MoeTraining())
