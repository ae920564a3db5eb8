"""The DeepSeek-V3 family as the engine sees it (see r1mega/models/family.py for the protocol).
Model code is imported when first used, so reading a config does not load it."""
from __future__ import annotations

from r1mega.models.deepseek_v3.config import FAMILY as NAME, RECOMPUTE_UNITS, ModelConfig, validate_keys, validate_layout
from r1mega.models.deepseek_v3.balance import MoETraining
from r1mega.models.spec import ModelFamily


def _stage(*args, **kwargs):
    from r1mega.models.deepseek_v3.model import DeepseekV3

    return DeepseekV3(*args, **kwargs)


def _gather_full(stage, grads: bool = False) -> dict:
    from r1mega.models.deepseek_v3.hf_weights import gather_full

    return gather_full(stage, grads)


def _planner():
    from r1mega.models.deepseek_v3 import plan

    return plan


def _count_params(cfg: ModelConfig) -> dict:
    from r1mega.models.deepseek_v3.params import count_params

    return count_params(cfg)


def _flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    from r1mega.models.deepseek_v3.params import flops_per_token

    return flops_per_token(cfg, seq_length)


def hf_optional(key: str, hf_config: dict) -> bool:
    """The MTP layer's copies of the embedding and head (DeepSeek-V3 ships them; r1mega shares the
    main model's) are present in real checkpoints but not needed. With `n_shared_experts: 0`
    transformers still keeps a shared expert of width 0 and saves its empty weights."""
    no_shared = hf_config.get("n_shared_experts", 1) in (0, None) and ".mlp.shared_experts." in key
    return no_shared or any(key in (mtp + "embed_tokens.weight", mtp + "shared_head.head.weight")
                            for mtp in _mtp_prefixes(hf_config))


def _mtp_prefixes(hf_config: dict) -> tuple[str, ...]:
    """`model.layers.<n>.` of each MTP layer config.json declares (they follow the main layers)."""
    n, k = hf_config.get("num_hidden_layers"), hf_config.get("num_nextn_predict_layers") or 0
    if not isinstance(n, int) or not isinstance(k, int):
        return ()
    return tuple(f"model.layers.{n + i}." for i in range(k))


def hf_may_lack(hf_config: dict, present) -> tuple[str, ...]:
    """The MTP layers config.json declares of which the checkpoint holds no tensor (transformers saves
    the model without them): r1mega then initialises them."""
    return tuple(mtp for mtp in _mtp_prefixes(hf_config) if not any(k.startswith(mtp) for k in present))


def hf_fp8(key: str) -> bool:
    """DeepSeek's FP8 linears: every attention, MLP and expert projection, the latent
    kv_a_proj_with_mqa included; the MTP layer's eh_proj is stored in bf16 like the router."""
    return key.endswith(("proj.weight", "kv_a_proj_with_mqa.weight")) and not key.endswith(".eh_proj.weight")


def _exact_rollouts_refusal(m: ModelConfig):
    return None if m.scoring_func == "sigmoid" else "needs sigmoid routing (model.scoring_func)"


def _draft_refusal(m: ModelConfig):
    return None if m.num_mtp_layers > 0 else "model.num_mtp_layers=0"


FAMILY = ModelFamily(
    name=NAME, hf_model_types=("deepseek_v3", "deepseek_v2"), config_cls=ModelConfig,
    validate_keys=validate_keys, validate_layout=validate_layout, stage_cls=_stage, gather_full=_gather_full,
    count_params=_count_params, plan_module=_planner, flops_per_token=_flops_per_token, kv_cache="mla_latent",
    routed_experts=lambda m: m.n_routed_experts,
    training_keys=ModelConfig.training_keys, recompute_units=RECOMPUTE_UNITS,
    exact_rollouts_refusal=_exact_rollouts_refusal, draft_refusal=_draft_refusal, fp32_params=("e_score_correction_bias",), hf_optional=hf_optional,
    hf_may_lack=hf_may_lack, hf_fp8=hf_fp8,
    training=MoETraining())
