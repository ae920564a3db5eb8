"""The dense (Qwen2/Llama) family as the engine sees it (see r1mega/models/family.py for the protocol).
Model code is imported when first used, so reading a config does not load it."""
from __future__ import annotations

from r1mega.models.dense.config import (
    DENSE_ARCHS, FAMILY as NAME, RECOMPUTE_UNITS, DenseConfig, validate_keys, validate_layout,
)
from r1mega.models.dense.training import DenseTraining
from r1mega.models.spec import ModelFamily


def _stage(*args, **kwargs):
    from r1mega.models.dense.model import DenseStudent

    return DenseStudent(*args, **kwargs)


def _gather_full(stage, grads: bool = False) -> dict:
    from r1mega.models.weights import gather_sharded

    return gather_sharded(stage, grads)


def _planner():
    from r1mega.models.dense import plan

    return plan


def _count_params(cfg: DenseConfig) -> dict:
    from r1mega.models.dense.params import count_params

    return count_params(cfg)


def _flops_per_token(cfg: DenseConfig, seq_length: int) -> float:
    from r1mega.models.dense.params import flops_per_token

    return flops_per_token(cfg, seq_length)


FAMILY = ModelFamily(
    name=NAME, hf_model_types=DENSE_ARCHS, config_cls=DenseConfig,
    validate_keys=validate_keys, validate_layout=validate_layout, stage_cls=_stage, gather_full=_gather_full,
    count_params=_count_params, plan_module=_planner, flops_per_token=_flops_per_token, kv_cache="heads",
    training_keys=DenseConfig.training_keys, recompute_units=RECOMPUTE_UNITS, training=DenseTraining())
