"""Dense (Qwen2/Qwen2.5, Llama 3) model config: its keys, its Hugging Face config.json mapping and its rules.

The `model:` section with `model.family: dense`; `student:` is the same section under its older name
(the R1 recipe distils into dense students). Imports nothing of the engine but errors and the checks.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from r1mega.checks import MAX_MODEL_DIM, at_least, need, pipeline_split, positive
from r1mega.errors import ConfigError
from r1mega.models.hf_config import check_value_types, hidden_act_from_hf, read_hf_config, rope_from_hf

FAMILY = "dense"
DENSE_ARCHS = ("qwen2", "qwen3", "llama")  # Hugging Face model_type of each dense architecture
TRAINING_KEYS: tuple[str, ...] = ()
# transformers' defaults for the keys a config.json may leave out, where r1mega's own differ
HF_DEFAULTS = {"llama": {"max_position_embeddings": 2048},
               "qwen2": {"num_key_value_heads": 32},
               "qwen3": {"num_key_value_heads": 32, "head_dim": 128}}
RECOMPUTE_UNITS = ("core_attn", "layernorm")
# the keys each rope scaling of models/rope.py reads (transformers refuses a rope lacking one too)
ROPE_REQUIRED_KEYS = {"linear": ("factor",),
                      "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                      "yarn": ("factor", "original_max_position_embeddings")}  # what `train.recompute_modules` may name for a dense model


@dataclass
class DenseConfig:
    """A dense student (Qwen2/Qwen2.5, Qwen3, Llama 3) for R1 distillation: GQA attention + SwiGLU FFN.
    A config with a `student:` section trains, generates and converts this model instead of `model:`."""

    arch: str = "qwen2"  # qwen2 | qwen3 | llama
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # default hidden_size // num_heads
    qkv_bias: bool = True  # Qwen2 has q/k/v biases, Llama and Qwen3 none
    o_bias: bool = False  # Llama's attention_bias=true also gives o_proj a bias
    tie_word_embeddings: bool = False
    rope_theta: float = 1000000.0
    rope_scaling: Optional[dict[str, Any]] = None  # {"rope_type": "llama3"|"yarn"|"linear", ...} or null
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    family: str = FAMILY  # the `model.family` key; fixed for this class
    training_keys: ClassVar[tuple[str, ...]] = TRAINING_KEYS  # training rules, not architecture

    def __post_init__(self):
        # the class is the family (a config copied from another family's takes this one's name)
        self.family = type(self).__dataclass_fields__["family"].default

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def qk_norm(self) -> bool:
        """Qwen3 RMS-normalises each query and key head (weights of head_dim) before the rotary."""
        return self.arch == "qwen3"

    @classmethod
    def from_hf(cls, source: str | dict) -> "DenseConfig":
        """Read a Hugging Face Qwen2/Qwen2.5 or Llama `config.json` (path, directory or dict)."""
        source, where = read_hf_config(source)
        try:
            cfg = cls._from_hf_dict(dict(source))
        except ConfigError as e:  # a key refused by name (ConfigError is a ValueError: not a wrong type)
            raise ConfigError(f"{where}: {e.key}", e.message) from None
        except KeyError as e:
            raise ConfigError(where, f"missing key {e.args[0]!r} that a Qwen2/Llama config must have") from None
        except (TypeError, ValueError) as e:  # e.g. float("abc") for rope_theta
            raise ConfigError(where, f"a value has the wrong type ({e})") from None
        check_value_types(cfg, where)
        return cfg

    @classmethod
    def _from_hf_dict(cls, hf: dict) -> "DenseConfig":
        arch = hf.get("model_type")
        if arch not in DENSE_ARCHS:
            raise ConfigError("model_type", f"expected one of {', '.join(DENSE_ARCHS)} for a dense student, "
                                            f"got {arch!r}")
        hf = {**HF_DEFAULTS[arch], **hf}  # a key left out means what it means to transformers
        _check_full_attention(arch, hf)
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias", "MLP biases are not supported for students")
        theta, rope = rope_from_hf(hf, "rope_type")
        heads = hf["num_attention_heads"]
        bias = bool(hf.get("attention_bias", False))
        head_dim = hf.get("head_dim")
        if head_dim == hf["hidden_size"] // heads:
            head_dim = None  # the default, spelled out: keep configs comparable (checkpoint arch check)
        return cls(
            arch=arch, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
            qkv_bias=True if arch == "qwen2" else bias, o_bias=arch != "qwen2" and bias,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=float(theta),
            rope_scaling=rope, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            hidden_act=hidden_act_from_hf(hf), initializer_range=hf.get("initializer_range", 0.02))

    def to_hf(self) -> dict:
        """A transformers Qwen2/Llama config.json for this student."""
        rope = ({"rope_type": "default", "rope_theta": self.rope_theta} if not self.rope_scaling else
                {**self.rope_scaling, "rope_theta": self.rope_theta})
        cls = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama"}[self.arch]
        out = {"architectures": [f"{cls}ForCausalLM"], "model_type": self.arch, "vocab_size": self.vocab_size,
               "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
               "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
               "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_size,
               "tie_word_embeddings": self.tie_word_embeddings, "rope_parameters": rope,
               "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": self.max_position_embeddings,
               "hidden_act": self.hidden_act, "initializer_range": self.initializer_range}
        if self.arch != "qwen2":
            out["attention_bias"] = self.o_bias
        return out



def _check_full_attention(arch: str, hf: dict) -> None:
    """Refuse a config.json whose attention slides in some layer, as transformers reads it: Llama has no
    window; Qwen2/Qwen3 slide only with `use_sliding_window` and a `sliding_window`, and only in the layers
    `layer_types` names `sliding_attention` (by default those from `max_window_layers` on, transformers'
    default 28). A window as long as every position never drops a key: full attention too."""
    if arch == "llama" or not hf.get("use_sliding_window") or hf.get("sliding_window") is None:
        return
    n, window = hf["num_hidden_layers"], hf["sliding_window"]
    types = hf.get("layer_types")
    if types is None:
        first = hf.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if sliding and window < hf.get("max_position_embeddings", 32768):
        raise ConfigError("use_sliding_window", f"layers {sliding} attend within a sliding window of {window} tokens "
                                                f"(layer_types / max_window_layers); sliding-window attention is not "
                                                f"supported for dense models")


def validate_keys(s: DenseConfig, section: str = "model") -> None:
    """The keys alone (no layout); the layout rules below repeat nothing of these."""
    need(s.family == FAMILY, f"{section}.family", f"a dense model section names family {FAMILY}, got {s.family!r}")
    for f in fields(s):
        v = getattr(s, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            need(v <= MAX_MODEL_DIM, f"{section}.{f.name}", f"{v} is beyond any supported size (at most {MAX_MODEL_DIM})")
    need(s.head_dim is None or s.head_dim > 0, f"{section}.head_dim", f"must be > 0 or null, got {s.head_dim}")
    positive(s, section, "rope_theta", "rms_norm_eps", "max_position_embeddings")
    at_least(s, section, 0, "initializer_range")


def validate_layout(s: DenseConfig, par, section: str = "model") -> None:
    """The model keys x a resolved parallel layout. KV heads need not divide tp: they are then
    replicated over TP."""
    need(s.arch in DENSE_ARCHS, f"{section}.arch", f"expected one of {', '.join(DENSE_ARCHS)}, got {s.arch!r}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        need(getattr(s, key) > 0, f"{section}.{key}", f"must be > 0, got {getattr(s, key)}")
    need(s.num_heads % s.num_kv_heads == 0, f"{section}.num_kv_heads",
         f"{s.num_heads} attention heads do not split into groups of {s.num_kv_heads} KV heads")
    need(s.head_size % 2 == 0, f"{section}.head_dim", f"rotary dimension must be even, got {s.head_size}")
    need(s.num_heads % par.tp == 0, f"{section}.num_heads",
         f"{s.num_heads} attention heads are not divisible by parallel.tp={par.tp}")
    need(s.vocab_size % par.tp == 0, f"{section}.vocab_size",
         f"vocab_size {s.vocab_size} is not divisible by parallel.tp={par.tp}")
    need(s.intermediate_size % par.tp == 0, f"{section}.intermediate_size",
         f"{s.intermediate_size} is not divisible by parallel.tp={par.tp}")
    pipeline_split(s.num_layers, par.pp, par.pp_layers, section)
    need(par.ep == 1 and par.expert_tp in (1, par.tp), "parallel.ep", "a dense model has no experts to shard")
    need(s.hidden_act == "silu", f"{section}.hidden_act", f"only silu is supported, got {s.hidden_act!r}")
    if s.arch == "qwen2":
        need(s.qkv_bias and not s.o_bias, f"{section}.qkv_bias", "Qwen2 has q/k/v biases and no o_proj bias")
    else:
        need(s.qkv_bias == s.o_bias, f"{section}.o_bias",
             f"{s.arch}'s attention_bias sets q/k/v and o_proj biases together")
    kind = (s.rope_scaling or {}).get("rope_type", (s.rope_scaling or {}).get("type", "default"))
    need(kind in ("default", "linear", "llama3", "yarn"), f"{section}.rope_scaling",
         f"unsupported rope type {kind!r} (default, linear, llama3, yarn)")
    for key in ROPE_REQUIRED_KEYS.get(kind, ()):
        v = s.rope_scaling.get(key)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, f"{section}.rope_scaling.{key}",
             f"{kind} rope scaling needs a number > 0, got {v!r}")

