"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) model config: its keys, its Hugging Face config.json
mapping and its rules.

The `model:` section with `model.family: qwen3_moe`. The architecture is Qwen3's attention (GQA,
per-head q/k RMSNorm, rotary) with sparse MoE blocks: a softmax router over `num_experts` SwiGLU
experts, top `num_experts_per_tok`, renormalised when `norm_topk_prob`; no shared expert. Layers in
`mlp_only_layers`, or where (i + 1) % decoder_sparse_step != 0, are dense SwiGLU of intermediate_size.
The model reuses the dense family's attention and the DeepSeek family's routed experts, so this
config also gives each of them a view of itself (`attention_view`, `moe_view`, both config-only
modules). Imports nothing of the engine but errors and the checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Optional

from r1mega.checks import MAX_MODEL_DIM, at_least, need, positive
from r1mega.errors import ConfigError
from r1mega.models.deepseek_v3.config import ModelConfig as DeepseekConfig
from r1mega.models.dense import config as dense
from r1mega.models.hf_config import check_value_types, hidden_act_from_hf, read_hf_config, rope_from_hf

FAMILY = "qwen3_moe"
HF_MODEL_TYPE = "qwen3_moe"
# the router's load-balancing loss (transformers adds it to the loss only with output_router_logits)
TRAINING_KEYS = ("router_aux_loss_coef", "output_router_logits")
# what `train.recompute_modules` may name for this family: the routed experts' activation and down
# projection (DeepSeek's MoE) and RMSNorm internals
RECOMPUTE_UNITS = ("moe_act", "layernorm")
# transformers' Qwen3MoeConfig defaults for the keys a config.json may leave out
HF_DEFAULTS = dict(num_key_value_heads=4, decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8,
                   num_experts=128, norm_topk_prob=False, router_aux_loss_coef=0.001, output_router_logits=False,
                   max_position_embeddings=32768, rms_norm_eps=1e-6, attention_bias=False)


@dataclass
class Qwen3MoeConfig:
    """Qwen3-MoE shapes (names as the dense family's where they mean the same, else as HF's)."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144  # the dense MLP of mlp_only_layers / non-sparse-step layers
    moe_intermediate_size: int = 768  # per routed expert
    num_layers: int = 48
    num_heads: int = 32
    num_kv_heads: int = 4
    head_dim: Optional[int] = None  # default hidden_size // num_heads (Qwen3-30B-A3B: 128 of 2048 / 32)
    attention_bias: bool = False  # q/k/v and o_proj biases together
    num_experts: int = 128
    num_experts_per_tok: int = 8
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    tie_word_embeddings: bool = False
    rope_theta: float = 1000000.0
    rope_scaling: Optional[dict[str, Any]] = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    # training rules, as transformers reads them: the balance loss is added (with this coefficient)
    # only when output_router_logits is true; see training.py for its form
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    family: str = FAMILY  # the `model.family` key; fixed for this class
    training_keys: ClassVar[tuple[str, ...]] = TRAINING_KEYS

    def __post_init__(self):
        self.family = type(self).__dataclass_fields__["family"].default

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def is_moe_layer(self, layer: int) -> bool:
        """transformers' rule: sparse unless listed in mlp_only_layers or off the sparse step."""
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    def moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    def attention_view(self) -> dense.DenseConfig:
        """The dense family's Qwen3 config with these attention shapes (its GQAttention and rules)."""
        return dense.DenseConfig(
            arch="qwen3", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, qkv_bias=self.attention_bias,
            o_bias=self.attention_bias, tie_word_embeddings=self.tie_word_embeddings, rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling, rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings, hidden_act=self.hidden_act,
            initializer_range=self.initializer_range)

    def moe_view(self) -> DeepseekConfig:
        """DeepSeekMoE's config for the same routed experts: softmax scores, greedy top-k, no groups, no
        shared expert, no scaling (its Router, GroupedExperts and EP dispatch run them)."""
        return DeepseekConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            moe_intermediate_size=self.moe_intermediate_size, num_layers=self.num_layers, num_heads=self.num_heads,
            n_routed_experts=self.num_experts, n_shared_experts=0, num_experts_per_tok=self.num_experts_per_tok,
            n_group=1, topk_group=1, scoring_func="softmax", topk_method="greedy",
            norm_topk_prob=self.norm_topk_prob, routed_scaling_factor=1.0, rms_norm_eps=self.rms_norm_eps,
            hidden_act=self.hidden_act, initializer_range=self.initializer_range)

    def to_hf(self) -> dict:
        """A transformers Qwen3MoeConfig config.json for this model."""
        rope = ({"rope_type": "default", "rope_theta": self.rope_theta} if not self.rope_scaling else
                {**self.rope_scaling, "rope_theta": self.rope_theta})
        return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": HF_MODEL_TYPE, "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "moe_intermediate_size": self.moe_intermediate_size, "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
                "head_dim": self.head_size, "attention_bias": self.attention_bias, "num_experts": self.num_experts,
                "num_experts_per_tok": self.num_experts_per_tok, "norm_topk_prob": self.norm_topk_prob,
                "decoder_sparse_step": self.decoder_sparse_step, "mlp_only_layers": list(self.mlp_only_layers),
                "tie_word_embeddings": self.tie_word_embeddings, "rope_parameters": rope,
                "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": self.max_position_embeddings,
                "hidden_act": self.hidden_act, "initializer_range": self.initializer_range,
                "router_aux_loss_coef": self.router_aux_loss_coef, "output_router_logits": self.output_router_logits,
                "use_sliding_window": False}

    @classmethod
    def from_hf(cls, source: "str | dict") -> "Qwen3MoeConfig":
        """Read a Hugging Face Qwen3-MoE `config.json` (path, directory or dict)."""
        source, where = read_hf_config(source)
        try:
            cfg = cls._from_hf_dict(dict(source))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.key}", e.message) from None
        except KeyError as e:
            raise ConfigError(where, f"missing key {e.args[0]!r} that a Qwen3-MoE config must have") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(where, f"a value has the wrong type ({e})") from None
        check_value_types(cfg, where)
        return cfg

    @classmethod
    def _from_hf_dict(cls, hf: dict) -> "Qwen3MoeConfig":
        if hf.get("model_type") != HF_MODEL_TYPE:
            raise ConfigError("model_type", f"expected {HF_MODEL_TYPE}, got {hf.get('model_type')!r}")
        if "num_experts" not in hf and "num_local_experts" in hf:  # transformers 5 writes its attribute's name
            hf["num_experts"] = hf["num_local_experts"]
        hf = {**HF_DEFAULTS, **hf}
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias", "Qwen3-MoE's MLPs have no biases (transformers ignores this key)")
        window = hf.get("sliding_window")
        if hf.get("use_sliding_window") and window is not None and window < hf["max_position_embeddings"]:
            raise ConfigError("use_sliding_window", f"every layer attends within a sliding window of {window} "
                                                    f"tokens; sliding-window attention is not supported")
        only = hf.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
            raise ConfigError("mlp_only_layers", f"expected a list of layer indices, got {only!r}")
        theta, rope = rope_from_hf(hf, "rope_type")
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim")
        if head_dim == hf["hidden_size"] // heads:
            head_dim = None  # the default, spelled out: keep configs comparable (checkpoint arch check)
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
            moe_intermediate_size=hf["moe_intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
            num_kv_heads=hf["num_key_value_heads"] or heads, head_dim=head_dim,
            attention_bias=bool(hf["attention_bias"]), num_experts=hf["num_experts"],
            num_experts_per_tok=hf["num_experts_per_tok"], norm_topk_prob=bool(hf["norm_topk_prob"]),
            decoder_sparse_step=hf["decoder_sparse_step"], mlp_only_layers=sorted(set(only)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=float(theta),
            rope_scaling=rope, rms_norm_eps=hf["rms_norm_eps"], max_position_embeddings=hf["max_position_embeddings"],
            hidden_act=hidden_act_from_hf(hf), initializer_range=hf.get("initializer_range", 0.02),
            router_aux_loss_coef=float(hf["router_aux_loss_coef"]),
            output_router_logits=bool(hf["output_router_logits"]))


def validate_keys(m: Qwen3MoeConfig, section: str = "model") -> None:
    """The keys alone (no layout): the attention's rules are the dense family's Qwen3 rules."""
    need(m.family == FAMILY, f"{section}.family", f"a Qwen3-MoE model section names family {FAMILY}, got {m.family!r}")
    for f in fields(m):
        v = getattr(m, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            need(v <= MAX_MODEL_DIM, f"{section}.{f.name}", f"{v} is beyond any supported size (at most {MAX_MODEL_DIM})")
    dense.validate_keys(m.attention_view(), section)
    at_least(m, section, 0, "num_experts")
    at_least(m, section, 1, "decoder_sparse_step")
    v = m.router_aux_loss_coef
    need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
         f"{section}.router_aux_loss_coef", f"must be a finite number >= 0, got {v!r}")
    bad = [i for i in m.mlp_only_layers if not (isinstance(i, int) and 0 <= i < m.num_layers)]
    need(not bad, f"{section}.mlp_only_layers", f"{bad} are not layer indices of a {m.num_layers}-layer model")
    if m.num_experts > 0:
        positive(m, section, "moe_intermediate_size", "num_experts_per_tok")
        need(m.num_experts_per_tok <= m.num_experts, f"{section}.num_experts_per_tok",
             f"{m.num_experts_per_tok} exceeds the {m.num_experts} experts")


def validate_layout(m: Qwen3MoeConfig, par, section: str = "model") -> None:
    """The model keys x a resolved parallel layout: attention and dense MLPs as the dense family
    splits them (KV heads TP does not divide are replicated), experts over EP and expert-TP."""
    dense.validate_layout(m.attention_view(), replace(par, ep=1, etp=None), section)
    ep, etp = par.ep, par.expert_tp
    if m.moe_layers() == 0:
        need(ep == 1, "parallel.ep", f"ep={ep} but the model has no routed experts")
        return
    need(m.num_experts % ep == 0, f"{section}.num_experts", f"{m.num_experts} experts are not divisible by parallel.ep={ep}")
    need(m.moe_intermediate_size % etp == 0, f"{section}.moe_intermediate_size",
         f"{m.moe_intermediate_size} is not divisible by expert tensor parallel size {etp}")
    need((par.tp * par.cp * par.dp) % (etp * ep) == 0, "parallel.ep",
         f"expert tp x ep = {etp} x {ep} does not divide the {par.tp * par.cp * par.dp} ranks "
         f"(tp x cp x dp) of a pipeline stage")
