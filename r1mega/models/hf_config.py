"""Reading a Hugging Face `config.json`: the one reader every family, the converter and the loaders use."""
from __future__ import annotations

import json
import os
from dataclasses import fields

from r1mega.errors import ConfigError


def read_hf_config(source: "str | dict") -> tuple[dict, str]:
    """A config.json (its path, its directory, or the dict itself) -> (dict, where it came from);
    unreadable, malformed or non-object files are named."""
    if not isinstance(source, str):
        hf, where = source, "config.json"
    else:
        where = os.path.join(source, "config.json") if os.path.isdir(source) else source
        try:
            with open(where) as f:
                hf = json.load(f)
        except OSError as e:
            raise ConfigError(where, f"cannot read: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(where, f"not valid JSON ({e.msg} at line {e.lineno})") from None
        except UnicodeDecodeError:
            raise ConfigError(where, "not UTF-8 text (JSON files are UTF-8); re-encode it") from None
        except RecursionError:
            raise ConfigError(where, "JSON nested too deeply to read") from None
    if not isinstance(hf, dict):
        raise ConfigError(where, f"expected a JSON object of model settings, got {type(hf).__name__}")
    return hf, where


def rope_from_hf(hf: dict, kind_key: str) -> tuple[float, "dict | None"]:
    """(rope_theta, rope scaling dict or None) from either spelling transformers writes
    (`rope_scaling` + `rope_theta`, or 5.x's `rope_parameters`); the kind is stored under `kind_key`."""
    rope = hf.get("rope_scaling") or hf.get("rope_parameters")
    # as transformers 5 standardises them: the dict's own theta wins over a top-level one
    theta = (rope or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    if rope is not None:
        rope = {k: v for k, v in rope.items() if k != "rope_theta"}
        kind = rope.get("rope_type", rope.get("type", "default"))
        rope = None if kind == "default" else {**rope, kind_key: kind}
        if kind in ("llama3", "yarn", "longrope"):
            # the pretraining length the scaling reads, as transformers' model standardises it when it is
            # built: a top-level original_max_position_embeddings (Phi-3's placement) over the dict's, else
            # max_position_embeddings. (AutoConfig alone shows the dict's: the model re-reads the key)
            if hf.get("original_max_position_embeddings") is not None:
                rope["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
            elif hf.get("max_position_embeddings") is not None:
                rope.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    return float(theta), rope


def hidden_act_from_hf(hf: dict) -> str:
    """config.json's hidden_act; "swish" is SiLU to transformers (ACT2FN), r1mega's "silu"."""
    act = hf.get("hidden_act", "silu")
    return "silu" if act == "swish" else act


def check_value_types(cfg, where: str) -> None:
    """Each field of a config read from config.json has its declared type (a string where a number
    belongs would otherwise fail deep inside the model); raises naming the file and key."""
    for f in fields(cfg):
        v, kind = getattr(cfg, f.name), str(f.type)
        ok = (v is None and "Optional" in kind) or (
            isinstance(v, bool) if kind == "bool" else
            isinstance(v, int) and not isinstance(v, bool) if kind.replace("Optional[", "").startswith("int") else
            isinstance(v, (int, float)) and not isinstance(v, bool) if kind == "float" else True)
        if not ok:
            raise ConfigError(f"{where}: {f.name}", f"expected {kind}, got {v!r}")
