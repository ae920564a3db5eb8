"""The model-family seam: everything generic code needs to know about a model architecture.

Generic code (trainer, GRPO, generation, checkpoints, the converter, verify-hf, the planner) talks to
a `ModelFamily` and imports no model package. A family lives in its own folder,
`r1mega/models/<name>/`, and owns there:

    config.py   its config dataclass (the `model:` section, `model.family: <name>`), read from and
                written to a Hugging Face config.json, and its rules: `validate_keys(cfg, section)`
                (keys alone) and `validate_layout(cfg, parallel, section)` (keys x TP/PP/EP/CP)
    model.py    the module for one pipeline stage, built as `stage_cls(cfg, ps, pp_layers, stage=,
                num_stages=)`, see `r1mega.models.stage` for what a stage exposes (its checkpoint
                slices, `new_kv_cache`, ...)
    spec.py     `FAMILY = ModelFamily(...)`: the pieces below, put together

and the registry below names it in one line. Adding a family: a folder with those three files and
one line in `_REGISTRY`.

    deepseek_v3   DeepSeek-V3/R1 and V2(-Lite): MLA (latent KV cache), DeepSeekMoE, MTP
    deepseek_v32  DeepSeek-V3.2: V3 + DeepSeek Sparse Attention (indexer keys cached too)
    dense         Qwen2/Qwen2.5, Qwen3, Llama 3: GQA (per-head KV cache), SwiGLU  (`student:` is its older section name)
    qwen3_moe     Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): the dense family's Qwen3 attention and
                  per-head KV cache, DeepSeek's routed experts (softmax top-k, EP); a load-balancing loss

There is no default here: a family is named by a config's section (`model.family`), an HF
config's `model_type`, or a checkpoint's meta.json, and anything else is an error.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from r1mega.errors import CheckpointError, ConfigError
from r1mega.models.deepseek_v3 import spec as deepseek_v3
from r1mega.models.deepseek_v32 import spec as deepseek_v32
from r1mega.models.dense import spec as dense
from r1mega.models.hf_config import read_hf_config
from r1mega.models.qwen3_moe import spec as qwen3_moe
from r1mega.models.spec import ModelFamily, TrainingHooks  # noqa: F401  (the protocol, re-exported)

_REGISTRY: dict[str, ModelFamily] = {f.name: f for f in (
    deepseek_v3.FAMILY,
    deepseek_v32.FAMILY,
    dense.FAMILY,
    qwen3_moe.FAMILY,
)}
DEFAULT_FAMILY = deepseek_v3.FAMILY.name  # what a run config's `model:` section is when it names none


def family_named(name: str) -> ModelFamily:
    if name not in _REGISTRY:
        raise ConfigError("model.family", f"unknown model family {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def families() -> list[ModelFamily]:
    return list(_REGISTRY.values())


def recompute_units() -> tuple[str, ...]:
    """Every part some family's layers can recompute (`train.recompute_modules`), in registry order."""
    return tuple(dict.fromkeys(u for f in _REGISTRY.values() for u in f.recompute_units))


def family_of_config(model_cfg) -> ModelFamily:
    """The family of a model config object (its class is registered by exactly one family)."""
    for fam in _REGISTRY.values():
        if type(model_cfg) is fam.config_cls:
            return fam
    raise TypeError(f"{type(model_cfg).__name__} is no registered model family's config "
                    f"(known: {', '.join(sorted(_REGISTRY))})")


def at_family_defaults(model_cfg) -> bool:
    """The model config says nothing but its family: its architecture keys are the class defaults
    (a checkpoint it loads then supplies family and shapes)."""
    keep = {k: getattr(model_cfg, k) for k in type(model_cfg).training_keys}
    return replace(type(model_cfg)(), **keep) == model_cfg


def family_for(cfg) -> tuple[ModelFamily, Any]:
    """(family, its model config) of a run config (its active model: `student:` when set, else `model:`)."""
    m = cfg.active_model
    return family_of_config(m), m


def family_of(stage) -> ModelFamily:
    return family_of_config(stage.cfg)


def family_for_hf(source: "str | dict") -> tuple[ModelFamily, Any]:
    """(family, model config) of a Hugging Face checkpoint's config.json (path, directory or dict),
    by its model_type."""
    hf, where = read_hf_config(source)
    kind = hf.get("model_type")
    known = [t for f in _REGISTRY.values() for t in f.hf_model_types]
    if kind is None:
        raise ConfigError(f"{where}: model_type",
                          f"missing: nothing says which architecture it is ({', '.join(known)})")
    for fam in _REGISTRY.values():
        if kind in fam.hf_model_types:
            return fam, fam.config_from_hf(source)  # the path, when given, names errors
    raise ConfigError("model_type", f"{kind!r} is not a supported model type ({', '.join(known)})")


def family_from_meta(meta: dict) -> tuple[ModelFamily, Any]:
    """(family, model config) recorded in an r1mega checkpoint's meta.json: the model config it was
    saved with (the importer and the trainer both record it; after train.allow_arch_change it differs
    from an imported model's config.json, which travels on only for the export)."""
    recorded = meta.get("model_config")
    if not isinstance(recorded, dict):
        has = "only hf_config" if meta.get("hf_config") is not None else "neither hf_config nor model_config"
        raise CheckpointError(f"the checkpoint's meta.json has {has}: nothing says what model it holds; it was "
                              f"not written by r1mega, or meta.json was edited")
    name = meta.get("family", recorded.get("family"))
    if name not in _REGISTRY:
        raise CheckpointError(f"the checkpoint's meta.json names model family {name!r}; known: "
                              f"{', '.join(sorted(_REGISTRY))}")
    fam = _REGISTRY[name]
    unknown = sorted(set(recorded) - {f.name for f in fields(fam.config_cls)})
    if unknown:
        raise CheckpointError(f"the checkpoint's meta.json model_config does not fit {fam.name}: "
                              f"unknown keys {unknown}")
    return fam, fam.config_cls(**recorded)


def model_of_checkpoint(meta: dict, model_cfg, where: str, section: str = "model") -> tuple[ModelFamily, Any]:
    """(family, model config) a run takes from a checkpoint's meta.json when its own model config is at
    its family's defaults (`at_family_defaults`): the checkpoint's, with the config's training keys
    (those its family lacks at the saved family's defaults).
    A family the config names (any but the default section's) must be the checkpoint's."""
    family = family_of_config(model_cfg)
    saved_family, saved = family_from_meta(meta)
    if family.name != DEFAULT_FAMILY and saved_family is not family:  # named, not left to the default
        raise ConfigError(f"{section}.family", f"the config names {family.name}, but {where} holds a "
                                               f"{saved_family.name} model; leave the family out to take it from "
                                               f"the checkpoint, or load a {family.name} checkpoint")
    # training keys are the run's, never the checkpoint's (e.g. a dense warm-up's dsa_stage): the config's
    # where its family has the key, else the saved family's defaults
    defaults = saved_family.config_cls()
    saved = replace(saved, **{k: getattr(model_cfg if k in family.training_keys else defaults, k)
                              for k in saved_family.training_keys})
    return saved_family, saved
