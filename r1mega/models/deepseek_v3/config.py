"""DeepSeek-V3-architecture model config: its keys, its Hugging Face config.json mapping and its rules.

The `model:` section of a run config (`model.family: deepseek_v3`, the default). Imports nothing of
the engine but errors and the shared checks, so the run config can compose it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from r1mega.checks import at_least, need, one_of, pipeline_split, positive
from r1mega.errors import ConfigError
from r1mega.models.hf_config import check_value_types, hidden_act_from_hf, read_hf_config, rope_from_hf

FAMILY = "deepseek_v3"
TRAINING_KEYS = ("mtp_weight", "balance_alpha", "bias_update_rate")
# the parts of its layers selective recompute can run again in backward (`train.recompute_modules`):
#   mla_up_proj     q_b/kv_b up-projections, RoPE and core attention: keeps the small latents
#                   instead of per-head q, k, v (the largest MLA tensors)
#   core_attn       the attention kernel alone
#   moe_act         routed experts' SwiGLU activation and down projection
#   layernorm       RMSNorm internals (float32 copies), keeping only the input
#   shared_experts  the shared experts' FFN
RECOMPUTE_UNITS = ("mla_up_proj", "core_attn", "moe_act", "layernorm", "shared_experts")

# transformers' defaults for the keys a config.json may leave out, where r1mega's own differ: without
# them a config lacking e.g. routed_scaling_factor or n_group built another model than transformers loads
HF_DEFAULTS = {
    "deepseek_v3": dict(q_lora_rank=1536, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
                        moe_intermediate_size=2048, n_group=8, topk_group=4, routed_scaling_factor=2.5,
                        first_k_dense_replace=3),
    "deepseek_v2": dict(q_lora_rank=1536, n_routed_experts=64, n_shared_experts=2, moe_intermediate_size=1407,
                        max_position_embeddings=2048),
}


@dataclass
class ModelConfig:
    """DeepSeek-V3-architecture model shapes (names follow the HF config where one exists)."""

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128  # dense FFN of the first_k_dense_replace layers
    moe_intermediate_size: int = 32  # per routed / shared expert
    num_layers: int = 2
    num_heads: int = 4
    q_lora_rank: Optional[int] = 32  # null: plain q_proj (V2-Lite)
    kv_lora_rank: int = 16
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 1
    topk_group: int = 1
    scoring_func: str = "sigmoid"  # sigmoid (V3) | softmax (V2)
    topk_method: str = "noaux_tc"  # noaux_tc (V3) | greedy | group_limited_greedy (V2)
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict[str, Any]] = None  # HF/DeepSeek yarn dict, or null
    rope_interleave: bool = True
    max_position_embeddings: int = 4096
    attention_bias: bool = False
    num_mtp_layers: int = 0  # HF num_nextn_predict_layers
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    # DeepSeek-V3 training rules (not architecture: a checkpoint may be trained on with others);
    # `train.mtp_weight`, `train.balance_alpha`, `train.bias_update_rate` are accepted as aliases
    mtp_weight: float = 0.3  # lambda of the MTP loss (DeepSeek-V3: 0.3 early, 0.1 later)
    balance_alpha: float = 1e-4  # sequence-wise balance loss weight
    bias_update_rate: float = 1e-3  # gamma of the aux-loss-free bias update
    family: str = FAMILY  # the `model.family` key; fixed for this class
    training_keys: ClassVar[tuple[str, ...]] = TRAINING_KEYS  # training rules, not architecture

    def __post_init__(self):
        # the class is the family (a config copied from another family's takes this one's name)
        self.family = type(self).__dataclass_fields__["family"].default

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return (
            self.n_routed_experts > 0
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )

    def to_hf(self) -> dict:
        """A transformers DeepseekV3 config.json for this model."""
        m = self
        rope = ({"rope_type": "default", "rope_theta": m.rope_theta} if not m.rope_scaling else
                {**m.rope_scaling, "rope_type": m.rope_scaling.get("type", "yarn"), "rope_theta": m.rope_theta})
        return {
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": m.vocab_size,
            "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
            "moe_intermediate_size": m.moe_intermediate_size, "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_heads, "q_lora_rank": m.q_lora_rank,
            "kv_lora_rank": m.kv_lora_rank, "qk_nope_head_dim": m.qk_nope_head_dim,
            "qk_rope_head_dim": m.qk_rope_head_dim,
            "v_head_dim": m.v_head_dim, "n_routed_experts": m.n_routed_experts, "n_shared_experts": m.n_shared_experts,
            "num_experts_per_tok": m.num_experts_per_tok, "n_group": m.n_group, "topk_group": m.topk_group,
            "topk_method": m.topk_method, "scoring_func": m.scoring_func, "norm_topk_prob": m.norm_topk_prob,
            "routed_scaling_factor": m.routed_scaling_factor, "first_k_dense_replace": m.first_k_dense_replace,
            "moe_layer_freq": m.moe_layer_freq, "rms_norm_eps": m.rms_norm_eps, "rope_parameters": rope,
            "rope_interleave": m.rope_interleave, "max_position_embeddings": m.max_position_embeddings,
            "attention_bias": m.attention_bias, "num_nextn_predict_layers": m.num_mtp_layers,
            "tie_word_embeddings": m.tie_word_embeddings, "hidden_act": m.hidden_act,
            "initializer_range": m.initializer_range, "bos_token_id": 0, "eos_token_id": 1,
        }

    @classmethod
    def from_hf(cls, source: str | dict) -> "ModelConfig":
        """Read a Hugging Face DeepSeek-V3/R1/V2(-Lite) `config.json` (path, directory or dict)."""
        source, where = read_hf_config(source)
        try:
            cfg = cls._from_hf_dict(dict(source))
        except ConfigError as e:  # a key refused by name (ConfigError is a ValueError: not a wrong type)
            raise ConfigError(f"{where}: {e.key}", e.message) from None
        except KeyError as e:
            raise ConfigError(where, f"missing key {e.args[0]!r} that a DeepSeek config must have") from None
        except (TypeError, ValueError) as e:  # e.g. float("abc") for rope_theta
            raise ConfigError(where, f"a value has the wrong type ({e})") from None
        check_value_types(cfg, where)
        return cfg

    @classmethod
    def _from_hf_dict(cls, hf: dict) -> "ModelConfig":
        model_type = hf.get("model_type", "deepseek_v3")
        if model_type not in ("deepseek_v3", "deepseek_v2"):
            raise ConfigError("model_type", f"expected deepseek_v3 or deepseek_v2, got {model_type!r}")
        is_v3 = model_type == "deepseek_v3"
        if not is_v3 and hf.get("mlp_bias"):  # transformers' V2 MLPs (dense and shared experts) then have biases
            raise ConfigError("mlp_bias", "MLP biases are not supported for DeepSeek models (r1mega's MLPs have none)")
        if not is_v3 and hf.get("rope_interleave", True) is not True:  # V3's key; V2 always rotates pairs
            raise ConfigError("rope_interleave", f"{hf['rope_interleave']!r}: DeepSeek-V2 rotates interleaved pairs "
                                                 f"(transformers ignores this key); set it to true or leave it out")
        if not is_v3 and hf.get("topk_method", "greedy") not in ("greedy", "group_limited_greedy"):
            raise ConfigError("topk_method", f"{hf['topk_method']!r}: DeepSeek-V2 routes by greedy or "
                                             f"group_limited_greedy (transformers runs no other)")
        hf = {**HF_DEFAULTS[model_type], **hf}  # a key left out means what it means to transformers
        if hf.get("moe_layer_freq", 1) != 1:  # transformers: routed experts in every layer from first_k_dense_replace
            raise ConfigError("moe_layer_freq", f"{hf['moe_layer_freq']!r}: transformers' DeepSeek models put routed "
                                                f"experts in every layer from first_k_dense_replace on (they ignore "
                                                f"this key); set it to 1 or leave it out")
        # transformers' routers score one way whatever scoring_func says; another would build a model
        # other than the one these weights were trained as and transformers loads
        scoring = "sigmoid" if is_v3 else "softmax"
        if hf.get("scoring_func", scoring) != scoring:
            raise ConfigError("scoring_func", f"{hf['scoring_func']!r}: the {'DeepSeek-V3/V3.2' if is_v3 else 'DeepSeek-V2'} "
                                              f"router scores experts with {scoring} (transformers ignores this key); "
                                              f"set it to {scoring!r} or leave it out")
        rope_theta, rope = rope_from_hf(hf, "type")
        n_experts = hf.get("n_routed_experts") or 0
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            moe_intermediate_size=hf.get("moe_intermediate_size", 0),
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            q_lora_rank=hf.get("q_lora_rank"),
            kv_lora_rank=hf["kv_lora_rank"],
            qk_nope_head_dim=hf["qk_nope_head_dim"],
            qk_rope_head_dim=hf["qk_rope_head_dim"],
            v_head_dim=hf["v_head_dim"],
            n_routed_experts=n_experts,
            n_shared_experts=hf.get("n_shared_experts") or 0,
            num_experts_per_tok=hf.get("num_experts_per_tok") or 0,
            n_group=hf.get("n_group") or 1,
            topk_group=hf.get("topk_group") or 1,
            scoring_func=scoring,
            topk_method=hf.get("topk_method", "noaux_tc" if is_v3 else "greedy"),
            # transformers' V2 router never renormalises; keep parity with it
            norm_topk_prob=bool(hf.get("norm_topk_prob", is_v3)) if is_v3 else False,
            routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
            first_k_dense_replace=hf.get("first_k_dense_replace", 0),
            moe_layer_freq=1,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope,
            rope_interleave=hf.get("rope_interleave", True),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            attention_bias=hf.get("attention_bias", False),
            num_mtp_layers=hf.get("num_nextn_predict_layers", 0),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            hidden_act=hidden_act_from_hf(hf),
            initializer_range=hf.get("initializer_range", 0.02),
        )



ROPE_KINDS = ("default", "yarn")
ROPE_SCALING_KEYS = ("type", "rope_type", "factor", "original_max_position_embeddings", "mscale", "mscale_all_dim",
                     "beta_fast", "beta_slow", "attention_factor", "truncate")
TOPK_METHODS = ("noaux_tc", "greedy", "group_limited_greedy")


# no real model comes near this; a larger value is a typo that would overflow tensor sizes
MAX_MODEL_DIM = 2 ** 31 - 1


def validate_keys(m: ModelConfig, section: str = "model") -> None:
    """Ranges and enums of the model keys alone (no layout)."""
    own = type(m).__dataclass_fields__["family"].default  # a subclass (V3.2) names its own family
    need(m.family == own, f"{section}.family", f"this section's keys are {own}'s, got family {m.family!r}")
    for f in fields(m):
        v = getattr(m, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            need(v <= MAX_MODEL_DIM, f"{section}.{f.name}", f"{v} is beyond any supported size (at most {MAX_MODEL_DIM})")
    positive(m, section, "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "max_position_embeddings", "rope_theta",
              "rms_norm_eps", "routed_scaling_factor")
    at_least(m, section, 0, "qk_nope_head_dim", "n_routed_experts", "n_shared_experts",
              "first_k_dense_replace", "num_mtp_layers", "initializer_range")
    at_least(m, section, 1, "moe_layer_freq", "n_group", "topk_group")
    if m.q_lora_rank is not None:
        need(m.q_lora_rank > 0, f"{section}.q_lora_rank", f"must be > 0 or null (plain q_proj), got {m.q_lora_rank}")
    need(m.qk_rope_head_dim % 2 == 0, f"{section}.qk_rope_head_dim",
          f"rotary dimension must be even, got {m.qk_rope_head_dim}")
    for key in TRAINING_KEYS:  # loss weights and the bias step: a negative or non-finite one trains nonsense
        v = getattr(m, key)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
             f"{section}.{key}", f"must be a finite number >= 0, got {v!r}")
    one_of(m.scoring_func, f"{section}.scoring_func", ("sigmoid", "softmax"))
    one_of(m.topk_method, f"{section}.topk_method", TOPK_METHODS)
    need(m.hidden_act == "silu", f"{section}.hidden_act", f"only silu is supported, got {m.hidden_act!r}")
    need(not m.tie_word_embeddings, f"{section}.tie_word_embeddings",
         "DeepSeek models have an output head of their own; tied embeddings are not supported")
    if m.rope_scaling is not None:
        for k in m.rope_scaling:
            need(k in ROPE_SCALING_KEYS, f"{section}.rope_scaling", f"unknown key {k!r} (known: {', '.join(ROPE_SCALING_KEYS)})")
        kind = m.rope_scaling.get("rope_type", m.rope_scaling.get("type", "default"))
        one_of(kind, f"{section}.rope_scaling.type", ROPE_KINDS)
        if kind == "yarn":
            orig = m.rope_scaling.get("original_max_position_embeddings")
            need(isinstance(orig, int) and orig > 0, f"{section}.rope_scaling.original_max_position_embeddings",
                  f"yarn needs a positive integer, got {orig!r}")
            factor = m.rope_scaling.get("factor")  # the softmax scale reads it too; transformers requires it
            need(isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0,
                 f"{section}.rope_scaling.factor", f"yarn needs a number > 0, got {factor!r}")
    if m.n_routed_experts > 0:
        need(m.moe_intermediate_size > 0, f"{section}.moe_intermediate_size",
              f"must be > 0 for a model with routed experts, got {m.moe_intermediate_size}")
        need(m.num_experts_per_tok >= 1, f"{section}.num_experts_per_tok",
              f"must be >= 1 for a model with routed experts, got {m.num_experts_per_tok}")


def validate_layout(m: ModelConfig, par, section: str = "model") -> None:
    """The model x a resolved parallel layout (tp/pp/ep/etp/cp/dp): heads, vocab, FFN and experts split."""
    tp, pp, ep, etp = par.tp, par.pp, par.ep, par.expert_tp
    at_least(m, section, 0, *TRAINING_KEYS)
    need(m.num_heads % tp == 0, f"{section}.num_heads",
         f"{m.num_heads} attention heads are not divisible by parallel.tp={tp}")
    need(m.vocab_size % tp == 0, f"{section}.vocab_size",
         f"vocab_size {m.vocab_size} is not divisible by parallel.tp={tp}")
    need(m.intermediate_size % tp == 0, f"{section}.intermediate_size",
         f"{m.intermediate_size} is not divisible by parallel.tp={tp}")
    pipeline_split(m.num_layers, pp, par.pp_layers, section)
    if m.n_routed_experts > 0:
        need(m.n_routed_experts % ep == 0, f"{section}.n_routed_experts",
             f"{m.n_routed_experts} experts are not divisible by parallel.ep={ep}")
        need(m.moe_intermediate_size % etp == 0, f"{section}.moe_intermediate_size",
             f"{m.moe_intermediate_size} is not divisible by expert tensor parallel size {etp}")
        if m.n_shared_experts:
            need((m.moe_intermediate_size * m.n_shared_experts) % tp == 0, f"{section}.moe_intermediate_size",
                 f"shared-expert width {m.moe_intermediate_size * m.n_shared_experts} "
                 f"is not divisible by parallel.tp={tp}")
        need(m.n_routed_experts % m.n_group == 0, f"{section}.n_group",
             f"{m.n_routed_experts} experts do not split into {m.n_group} groups")
        need(1 <= m.topk_group <= m.n_group, f"{section}.topk_group",
             f"must be in [1, n_group={m.n_group}], got {m.topk_group}")
        per_group = m.n_routed_experts // m.n_group
        need(m.num_experts_per_tok <= per_group * m.topk_group, f"{section}.num_experts_per_tok",
             f"{m.num_experts_per_tok} exceeds the {per_group * m.topk_group} experts in the "
             f"{m.topk_group} selected groups")
        if m.scoring_func == "sigmoid" and m.n_group > 1:
            need(per_group >= 2, f"{section}.n_group", "sigmoid group scores sum the top-2 of each group")
        # Expert layout: etp x ep x edp must tile the tp x cp x dp ranks of one pipeline stage.
        need((tp * par.cp * par.dp) % (etp * ep) == 0, "parallel.ep",
             f"expert tp x ep = {etp} x {ep} does not divide the {tp * par.cp * par.dp} ranks "
             f"(tp x cp x dp) of a pipeline stage")
    elif ep > 1:
        raise ConfigError("parallel.ep", f"ep={ep} but the model has no routed experts")
