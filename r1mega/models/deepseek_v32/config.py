"""DeepSeek-V3.2's config: DeepSeek-V3's shapes plus the lightning indexer of DeepSeek Sparse
Attention (DSA). Read from / written to a transformers `deepseek_v32` config.json."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from r1mega.errors import ConfigError
from r1mega.models.deepseek_v3.config import RECOMPUTE_UNITS as V3_RECOMPUTE_UNITS
from r1mega.models.deepseek_v3.config import TRAINING_KEYS as V3_TRAINING_KEYS, ModelConfig
from r1mega.models.deepseek_v3.config import validate_keys as v3_validate_keys

FAMILY = "deepseek_v32"
DSA_STAGES = ("dense_warmup", "sparse")
# the indexer's training stage and its KL loss weight (training.py); `train.dsa_stage` and
# `train.index_loss_weight` are their older names
TRAINING_KEYS = (*V3_TRAINING_KEYS, "dsa_stage", "index_loss_weight")
# DeepSeek-V3's recompute units, and `indexer`: the lightning indexer's keys, queries and head
# weights (its own projections; its scores go by blocks already)
RECOMPUTE_UNITS = (*V3_RECOMPUTE_UNITS, "indexer")


@dataclass
class DSAConfig(ModelConfig):
    """Defaults of the released DeepSeek-V3.2 (transformers' DeepseekV32Config): 64 indexer heads of
    128, each query attends to its top 2,048 tokens."""

    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048
    # the indexer's training stage: null | dense_warmup | sparse (training rules, not architecture)
    dsa_stage: Optional[str] = None
    index_loss_weight: float = 1.0  # weight of the indexer's KL loss (per target token)
    family: str = FAMILY  # the `model.family` key; fixed for this class
    training_keys: ClassVar[tuple[str, ...]] = TRAINING_KEYS

    @classmethod
    def _from_hf_dict(cls, hf: dict) -> "DSAConfig":
        if hf.get("model_type") != "deepseek_v32":
            raise ConfigError("model_type", f"expected deepseek_v32, got {hf.get('model_type')!r}")
        if hf.get("rope_interleave", True) is not True:  # V3's key; transformers' V3.2 MLA always rotates pairs
            raise ConfigError("rope_interleave", f"{hf['rope_interleave']!r}: DeepSeek-V3.2's attention rotates "
                                                 f"interleaved pairs (transformers ignores this key); set it to true "
                                                 f"or leave it out")
        types = hf.get("mlp_layer_types")
        if types is not None:  # transformers builds each layer's MLP by it, whatever first_k_dense_replace says
            n = hf.get("num_hidden_layers")
            dense = next((i for i, t in enumerate(types) if t != "dense"), len(types)) if isinstance(types, list) else -1
            if not isinstance(types, list) or len(types) != n or types[dense:] != ["sparse"] * (len(types) - dense):
                raise ConfigError("mlp_layer_types", f"{types!r}: r1mega builds {n} layers as 'dense' ones, then "
                                                     f"'sparse' (MoE) ones; any other order is not supported")
            if dense != min(hf.get("first_k_dense_replace", 3), n):  # 3: transformers' default
                hf = {**hf, "first_k_dense_replace": dense}
        # transformers' DeepseekV32Config defaults to 163,840 positions (V3's own: 4,096)
        base = ModelConfig._from_hf_dict({"max_position_embeddings": 163840, **hf, "model_type": "deepseek_v3"})
        fields = {k: v for k, v in vars(base).items() if k != "family"}
        return cls(**fields, index_n_heads=hf.get("index_n_heads", 64), index_head_dim=hf.get("index_head_dim", 128),
                   index_topk=hf.get("index_topk", 2048))

    def to_hf(self) -> dict:
        out = super().to_hf()
        out.update(architectures=["DeepseekV32ForCausalLM"], model_type="deepseek_v32",
                   index_n_heads=self.index_n_heads, index_head_dim=self.index_head_dim, index_topk=self.index_topk)
        out.pop("rope_interleave", None)  # V3.2's MLA is always interleaved, its indexer never
        return out

    def validate(self) -> None:
        """The indexer's own shapes (the rest is DeepSeek-V3's validate_model)."""
        for key in ("index_n_heads", "index_head_dim", "index_topk"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"model.{key}", f"must be an integer >= 1, got {v!r}")
        if self.index_head_dim < self.qk_rope_head_dim or self.qk_rope_head_dim % 2:
            raise ConfigError("model.index_head_dim", f"{self.index_head_dim} must hold the even rotary part "
                                                      f"qk_rope_head_dim={self.qk_rope_head_dim}")
        if not self.rope_interleave:  # config.json has no key for it: an export would rotate pairs
            raise ConfigError("model.rope_interleave", "DeepSeek-V3.2's attention rotates interleaved pairs; "
                                                       "set it to true")
        if not self.q_lora_rank:
            raise ConfigError("model.q_lora_rank", "the indexer reads the query latent: DeepSeek-V3.2 needs "
                                                   "q_lora_rank")
        if self.dsa_stage not in (None, *DSA_STAGES):
            raise ConfigError("model.dsa_stage", f"expected dense_warmup, sparse or null, got {self.dsa_stage!r}")
        if not (math.isfinite(self.index_loss_weight) and self.index_loss_weight >= 0):
            raise ConfigError("model.index_loss_weight", f"must be a finite number >= 0, got {self.index_loss_weight}")


def validate_keys(m: DSAConfig, section: str = "model") -> None:
    """DeepSeek-V3's key rules, then the indexer's."""
    v3_validate_keys(m, section)
    m.validate()
