"""The model-family seam: everything generic code needs to know about a model architecture.

A family supplies its config type (read from / written to a Hugging Face config.json), the
module for one pipeline stage (which yields its checkpoint slices and builds its KV cache, see
`r1mega.models.stage`), a full-tensor gather for tests and conversions, and parameter/FLOP counts.
Pipeline, trainer, GRPO, generation, checkpoints, conversion and the planner go through this
module and import no model package directly.

    deepseek_v3   DeepSeek-V3/R1 and V2(-Lite): MLA (latent KV cache), DeepSeekMoE, MTP   (`model:`)
    deepseek_v32  DeepSeek-V3.2: V3 + DeepSeek Sparse Attention (indexer keys cached too)   (`model:`)
    dense         Qwen2/Qwen2.5, Qwen3, Llama 3 students: GQA (per-head KV cache), SwiGLU (`student:`)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch.nn as nn

from r1mega.config import DENSE_ARCHS, Config, ConfigError, DenseConfig, ModelConfig
from r1mega.errors import CheckpointError
from r1mega.parallel.layout import ParallelState


@dataclass(frozen=True)
class ModelFamily:
    name: str
    hf_model_types: tuple[str, ...]
    config_cls: type
    stage_cls: Callable[..., nn.Module]  # (cfg, ps, pp_layers=None, stage=None, num_stages=None)
    gather_full: Callable[..., dict]  # (stage, grads=False) -> {checkpoint key: full tensor}
    count_params: Callable[[Any], dict]  # -> {"total", "active", "mtp", ...}
    flops_per_token: Callable[[Any, int], float]
    kv_cache: str  # what generation caches per token and layer

    def config_from_hf(self, source: str | dict):
        return self.config_cls.from_hf(source)

    def config_to_hf(self, cfg) -> dict:
        return cfg.to_hf()

    def build_stage(self, cfg, ps: ParallelState, pp_layers: Optional[list[int]] = None,
                    stage: Optional[int] = None, num_stages: Optional[int] = None) -> nn.Module:
        return self.stage_cls(cfg, ps, pp_layers, stage=stage, num_stages=num_stages)


def _deepseek_v3() -> ModelFamily:
    from r1mega.models.deepseek_v3 import params
    from r1mega.models.deepseek_v3.hf_weights import gather_full
    from r1mega.models.deepseek_v3.model import DeepseekV3

    return ModelFamily("deepseek_v3", ("deepseek_v3", "deepseek_v2"), ModelConfig, DeepseekV3, gather_full,
                       params.count_params, params.flops_per_token, "mla_latent")


def _dense() -> ModelFamily:
    from r1mega.models.dense import params
    from r1mega.models.dense.model import DenseStudent
    from r1mega.models.weights import gather_sharded

    return ModelFamily("dense", DENSE_ARCHS, DenseConfig, DenseStudent, gather_sharded,
                       params.count_params, params.flops_per_token, "heads")


def _deepseek_v32() -> ModelFamily:
    from r1mega.models.deepseek_v3.hf_weights import gather_full
    from r1mega.models.deepseek_v32 import params
    from r1mega.models.deepseek_v32.config import DSAConfig
    from r1mega.models.deepseek_v32.model import DeepseekV32

    return ModelFamily("deepseek_v32", ("deepseek_v32",), DSAConfig, DeepseekV32, gather_full,
                       params.count_params, params.flops_per_token, "mla_latent+index_keys")


_BUILDERS = {"deepseek_v3": _deepseek_v3, "deepseek_v32": _deepseek_v32, "dense": _dense}
_CACHE: dict[str, ModelFamily] = {}


def family_named(name: str) -> ModelFamily:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(_BUILDERS)}")
    if name not in _CACHE:
        _CACHE[name] = _BUILDERS[name]()
    return _CACHE[name]


def family_of_config(model_cfg) -> ModelFamily:
    """The family of a model config object (ModelConfig or DenseConfig)."""
    if isinstance(model_cfg, DenseConfig):
        return family_named("dense")
    return family_named("deepseek_v32" if hasattr(model_cfg, "index_topk") else "deepseek_v3")


def family_for(cfg: Config) -> tuple[ModelFamily, Any]:
    """(family, its model config) of a run config: the student when `student:` is set."""
    m = cfg.active_model
    return family_of_config(m), m


def family_of(stage: nn.Module) -> ModelFamily:
    return family_of_config(stage.cfg)


def read_hf_config(source: str | dict) -> dict:
    if isinstance(source, dict):
        return source
    path = os.path.join(source, "config.json") if os.path.isdir(source) else source
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None


def family_for_hf(source: str | dict) -> tuple[ModelFamily, Any]:
    """(family, model config) of a Hugging Face checkpoint's config.json (path, directory or dict),
    by its model_type."""
    kind = read_hf_config(source).get("model_type", "deepseek_v3")
    for name in _BUILDERS:
        fam = family_named(name)
        if kind in fam.hf_model_types:
            return fam, fam.config_from_hf(source)  # the path, when given, names errors
    known = [t for n in _BUILDERS for t in family_named(n).hf_model_types]
    raise ConfigError("model_type", f"{kind!r} is not a supported model type ({', '.join(known)})")


def family_from_meta(meta: dict) -> tuple[ModelFamily, Any]:
    """(family, model config) recorded in an r1mega checkpoint's meta.json."""
    if meta.get("hf_config") is not None:
        return family_for_hf(meta["hf_config"])
    fam = family_named(meta.get("family", "deepseek_v3"))
    recorded = meta.get("model_config")
    if not isinstance(recorded, dict):
        raise CheckpointError("the checkpoint's meta.json has neither hf_config nor model_config: nothing says "
                              "what model it holds; it was not written by r1mega, or meta.json was edited")
    try:
        return fam, fam.config_cls(**recorded)
    except TypeError as e:
        raise CheckpointError(f"the checkpoint's meta.json model_config does not fit {fam.name}: {e}") from None


def build_config(model_cfg, parallel=None) -> Config:
    """A run Config whose active model is `model_cfg` (for verify-hf, tools and tests)."""
    from r1mega.config import ParallelConfig

    par = parallel or ParallelConfig()
    if isinstance(model_cfg, DenseConfig):
        return Config(student=model_cfg, parallel=par)
    return Config(model=model_cfg, parallel=par)
