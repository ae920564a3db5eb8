"""Typed configuration: dataclasses, YAML files, dotted CLI overrides, up-front validation.

OmegaConf does the merging (YAML + `a.b=c` overrides onto typed dataclasses); it already rejects
unknown keys and wrong types naming the full key. `validate()` adds the cross-field rules of a
parallel layout, so a bad launch fails before any weight is allocated.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r1mega.errors import ConfigError  # noqa: F401  (re-exported: `from r1mega.config import ConfigError`)

RECOMPUTE_MODES = ("none", "selective", "full")
SELECTIVE_RECOMPUTE_MODULES = ("mla_up_proj", "core_attn", "moe_act", "layernorm", "shared_experts")


def read_hf_config(source: "str | dict") -> tuple[dict, str]:
    """A Hugging Face `config.json` (its path, its directory, or the dict itself) -> (dict, where),
    unreadable or malformed files named."""
    if not isinstance(source, str):
        return source, "config.json"
    where = os.path.join(source, "config.json") if os.path.isdir(source) else source
    try:
        with open(where) as f:
            return json.load(f), where
    except OSError as e:
        raise ConfigError(where, f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(where, f"not valid JSON ({e.msg} at line {e.lineno})") from None


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
        rope = {"rope_type": "default", "rope_theta": m.rope_theta} if not m.rope_scaling else \
            {**m.rope_scaling, "rope_type": m.rope_scaling.get("type", "yarn"), "rope_theta": m.rope_theta}
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
        if not isinstance(source, dict):
            raise ConfigError(where, f"expected a JSON object of model settings, got {type(source).__name__}")
        try:
            cfg = cls._from_hf_dict(dict(source))
        except KeyError as e:
            raise ConfigError(where, f"missing key {e.args[0]!r} that a DeepSeek config must have") from None
        except (TypeError, ValueError) as e:  # e.g. float("abc") for rope_theta
            raise ConfigError(where, f"a value has the wrong type ({e})") from None
        for f in fields(cfg):  # a string where a number belongs would fail deep inside the model
            v, kind = getattr(cfg, f.name), str(f.type)
            ok = (v is None and "Optional" in kind) or (
                isinstance(v, bool) if kind == "bool" else
                isinstance(v, int) and not isinstance(v, bool) if kind.replace("Optional[", "").startswith("int") else
                isinstance(v, (int, float)) and not isinstance(v, bool) if kind == "float" else True)
            if not ok:
                raise ConfigError(f"{where}: {f.name}", f"expected {kind}, got {v!r}")
        return cfg

    @classmethod
    def _from_hf_dict(cls, hf: dict) -> "ModelConfig":
        model_type = hf.get("model_type", "deepseek_v3")
        if model_type not in ("deepseek_v3", "deepseek_v2"):
            raise ConfigError("model_type", f"expected deepseek_v3 or deepseek_v2, got {model_type!r}")
        is_v3 = model_type == "deepseek_v3"
        rope = hf.get("rope_scaling") or hf.get("rope_parameters")
        rope_theta = hf.get("rope_theta", (rope or {}).get("rope_theta", 10000.0))
        if rope is not None:
            rope = {k: v for k, v in rope.items() if k != "rope_theta"}
            kind = rope.get("rope_type", rope.get("type", "default"))
            rope = None if kind == "default" else {**rope, "type": kind}
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
            scoring_func=hf.get("scoring_func", "sigmoid" if is_v3 else "softmax"),
            topk_method=hf.get("topk_method", "noaux_tc" if is_v3 else "greedy"),
            # transformers' V2 router never renormalises; keep parity with it
            norm_topk_prob=bool(hf.get("norm_topk_prob", is_v3)) if is_v3 else False,
            routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
            first_k_dense_replace=hf.get("first_k_dense_replace", 0),
            moe_layer_freq=hf.get("moe_layer_freq", 1),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope,
            rope_interleave=hf.get("rope_interleave", True),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            attention_bias=hf.get("attention_bias", False),
            num_mtp_layers=hf.get("num_nextn_predict_layers", 0),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            hidden_act=hf.get("hidden_act", "silu"),
            initializer_range=hf.get("initializer_range", 0.02),
        )


@dataclass
class ParallelConfig:
    """Megatron-style explicit sizes. dp is derived from the world size when left null."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: Optional[int] = None  # expert tensor parallel; null means = tp (Megatron's default)
    dp: Optional[int] = None
    sp: bool = False  # sequence parallel (needs tp > 1 to matter)
    cp: int = 1  # context parallel: each sequence in 2*cp zigzag chunks over cp ranks
    pp_layers: Optional[list[int]] = None  # layers per stage for uneven splits; null: even split

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def sequence_divisor(self) -> int:
        """What every sequence length must be a multiple of: 2 x cp zigzag chunks (cp > 1), each
        cp rank's tokens split again over tp under SP. Validation, verify-hf, the planner and
        GRPO's row padding all ask this one rule."""
        return (2 * self.cp if self.cp > 1 else 1) * (self.tp if self.sp and self.tp > 1 else 1)

    def sequence_divisor_text(self) -> str:
        """How sequence_divisor is made up, for error messages."""
        parts = (["2 x cp"] if self.cp > 1 else []) + (["tp (sequence parallel)"] if self.sp and self.tp > 1 else [])
        return f"{' x '.join(parts)} = {self.sequence_divisor}"


@dataclass
class DataConfig:
    seq_length: int = 16
    micro_batch_size: int = 2
    global_batch_size: int = 4
    # pretrain: indexed dataset prefixes (<prefix>.bin/.idx); sft: JSONL chat files (the first is used)
    paths: list[str] = field(default_factory=list)
    weights: Optional[list[float]] = None  # blending weights for `paths` (pretrain)
    tokenizer: Optional[str] = None  # tokenizer.json / directory / sentencepiece .model
    # sft: how a chat record becomes tokens: auto | model | r1 | raw (r1mega/data/sft.py)
    sft_template: str = "auto"
    # "arithmetic": build the corpus, tokenizer and indexed files under cache_dir when missing
    synthetic: Optional[str] = None
    synthetic_docs: int = 2000
    cache_dir: str = "runs/data"


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    decay: str = "cosine"  # cosine | constant | linear
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 20
    schedule: str = "1f1b"  # gpipe | 1f1b | interleaved
    virtual_stages: int = 1  # model chunks per pipeline rank (interleaved schedule)
    dtype: str = "float32"  # float32 | bfloat16 (weights; master weights are always float32)
    mtp_weight: float = 0.3  # lambda of the MTP loss (DeepSeek-V3: 0.3 early, 0.1 later)
    balance_alpha: float = 1e-4  # sequence-wise balance loss weight
    bias_update_rate: float = 1e-3  # gamma of the aux-loss-free bias update
    log_interval: int = 1
    run_dir: str = "runs/train"
    save_interval: int = 0  # 0: only at the end
    load: Optional[str] = None  # a checkpoint directory; by default resume from run_dir/checkpoints
    wandb: bool = False
    wandb_project: str = "r1mega"
    peak_tflops: Optional[float] = None  # per device, for MFU; None: H100 bf16 dense on GPU, none on CPU
    max_consecutive_skips: int = 10  # stop when this many steps in a row are non-finite; 0: never
    verify_checkpoint: bool = True  # check each loaded piece's CRC32 against the checkpoint's record
    # model keys allowed to differ from the checkpoint's on resume (e.g. [rope_scaling] to extend context)
    allow_arch_change: list[str] = field(default_factory=list)
    recompute: str = "none"  # none | selective | full (activation recompute, parallel/recompute.py)
    recompute_modules: list[str] = field(default_factory=lambda: list(SELECTIVE_RECOMPUTE_MODULES))
    # FP8 linears (DeepSeek-V3's blockwise recipe): none | blockwise
    fp8: str = "none"
    fp8_backend: str = "auto"  # auto | emulated | te (auto: Transformer Engine where built and usable)
    fp8_block: int = 128  # tile length: 1 x block for activations/gradients, block x block for weights
    fp8_pow2_scales: bool = False  # round scales down to powers of two
    # DeepSeek-V3.2 indexer training (models/deepseek_v32/training.py): null | dense_warmup | sparse
    dsa_stage: Optional[str] = None
    index_loss_weight: float = 1.0  # weight of the indexer's KL loss (per target token)


DENSE_ARCHS = ("qwen2", "qwen3", "llama")  # Hugging Face model_type of each dense student


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
            return cls._from_hf_dict(dict(source))
        except KeyError as e:
            raise ConfigError(where, f"missing key {e.args[0]!r} that a Qwen2/Llama config must have") from None

    @classmethod
    def _from_hf_dict(cls, hf: dict) -> "DenseConfig":
        arch = hf.get("model_type")
        if arch not in DENSE_ARCHS:
            raise ConfigError("model_type", f"expected one of {', '.join(DENSE_ARCHS)} for a dense student, "
                                            f"got {arch!r}")
        if hf.get("use_sliding_window"):
            raise ConfigError("use_sliding_window", "sliding-window attention is not supported for students")
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias", "MLP biases are not supported for students")
        rope = hf.get("rope_scaling") or hf.get("rope_parameters")
        theta = hf.get("rope_theta", (rope or {}).get("rope_theta", 10000.0))
        if rope is not None:
            rope = {k: v for k, v in rope.items() if k != "rope_theta"}
            kind = rope.get("rope_type", rope.get("type", "default"))
            rope = None if kind == "default" else {**rope, "rope_type": kind}
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
            hidden_act=hf.get("hidden_act", "silu"), initializer_range=hf.get("initializer_range", 0.02))

    def to_hf(self) -> dict:
        """A transformers Qwen2/Llama config.json for this student."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta} if not self.rope_scaling else \
            {**self.rope_scaling, "rope_theta": self.rope_theta}
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


@dataclass
class RLConfig:
    """GRPO. Defaults are DeepSeek-R1-Zero's published settings (DeepSeek-R1, Nature version).

    A training step is one optimizer step on prompts_per_step x group_size outputs (R1: 32 x 16 =
    512). A rollout samples `minibatches` steps' worth at once (R1: 8,192 outputs = 16 mini-batches)
    and every mini-batch reuses the rollout's old log-probs, so the ratio and clip act."""

    group_size: int = 16  # samples per question
    prompts_per_step: int = 32  # questions per optimizer step (512 outputs per step)
    minibatches: int = 1  # optimizer steps per rollout (R1: 16)
    rollout_batch: Optional[int] = None  # outputs per rollout; null: prompts_per_step x group_size x minibatches
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32768
    # [[step, tokens], ...]: from `step` on, generate up to `tokens` (R1: [[8200, 65536]])
    max_new_tokens_schedule: list[list[int]] = field(default_factory=list)
    kl_coef: float = 0.001  # k3 estimator against the reference policy; 0 disables the KL term
    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: asymmetric "clip-higher"; R1's first RL stage uses 10
    ref_refresh_steps: int = 400
    updates_per_rollout: int = 1  # passes over each rollout's mini-batches (old log-probs kept)
    # loss normaliser: sequence (mean per sequence, then over sequences; DeepSeekMath), token (over all
    # tokens of the step) or constant (token sums / (sequences x max_new_tokens); Dr.GRPO)
    loss_norm: str = "sequence"
    token_level_loss: bool = False  # shorthand for loss_norm=token
    scale_rewards: bool = True  # divide advantages by the group's std; false: Dr.GRPO
    drop_equal_reward_groups: bool = False
    overlong_filter: bool = False  # DAPO: truncated outputs take no part in the loss
    overlong_buffer: int = 0  # DAPO soft overlong punishment over the last N tokens of the budget
    overlong_penalty: float = 1.0  # reward subtracted at the very end of the buffer
    # truncated importance sampling against the rollout's own log-probs (sampler/trainer mismatch);
    # null: on when train.dtype is bfloat16 or train.fp8 is on (the sampler then runs train.dtype)
    tis: Optional[bool] = None
    tis_cap: float = 2.0
    routing_replay: bool = False
    rewards: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    language: Optional[str] = None  # target language for the language-consistency reward (default en)
    # final answer when there is neither <answer> nor \boxed after the thought (r1mega/judge/answers.py)
    answer_fallback: str = "auto"  # auto ("A:" line, else last number) | a_colon | last_number | none
    # prompt datasets: JSONL files, one problem per line (see r1mega/data/prompts.py); empty: data.synthetic
    prompts: list[str] = field(default_factory=list)
    template: str = "raw"  # r1_zero | chat | chat_think | raw (r1mega/data/templates.py)
    log_rollouts: int = 4  # sample rollouts appended to <run_dir>/rollouts.jsonl per step
    log_rollouts_every: int = 10  # steps between wandb tables of those rollouts (train.wandb; 0: none)
    # run code rewards without the isolated sandbox where it cannot be set up (only for trusted code)
    unsafe_code_sandbox: bool = False


RL_TEMPLATES = ("r1_zero", "chat", "chat_think", "raw")
RL_LOSS_NORMS = ("sequence", "token", "constant")


def validate_rl(cfg: "Config", world_size: int, resuming: bool = False) -> "Config":
    """The rl.* rules of a GRPO run (after validate_training). Raises ConfigError naming the key.
    resuming: the run directory holds the run's own checkpoint (no train.load needed)."""
    from r1mega.rl.rewards import REWARDS  # the reward registry is the source of valid names

    rl, par = cfg.rl, cfg.parallel

    def need(cond: bool, key: str, msg: str):
        if not cond:
            raise ConfigError(key, msg)

    need(rl.group_size >= 2, "rl.group_size", f"GRPO compares outputs within a group: needs >= 2, got {rl.group_size}")
    need(rl.prompts_per_step >= 1, "rl.prompts_per_step", f"must be >= 1, got {rl.prompts_per_step}")
    need(rl.minibatches >= 1, "rl.minibatches", f"must be >= 1, got {rl.minibatches}")
    need(rl.updates_per_rollout >= 1, "rl.updates_per_rollout", f"must be >= 1, got {rl.updates_per_rollout}")
    per_rollout = rl.prompts_per_step * rl.group_size * rl.minibatches
    need(rl.rollout_batch is None or rl.rollout_batch == per_rollout, "rl.rollout_batch",
         f"{rl.rollout_batch} outputs per rollout != prompts_per_step x group_size x minibatches = "
         f"{rl.prompts_per_step} x {rl.group_size} x {rl.minibatches} = {per_rollout}")
    need(rl.prompts_per_step % par.dp == 0, "rl.prompts_per_step",
         f"{rl.prompts_per_step} questions do not split over dp={par.dp} (groups never straddle ranks)")
    need(rl.temperature > 0 and math.isfinite(rl.temperature), "rl.temperature",
         f"must be > 0 (log-probs are of softmax(logits / T)), got {rl.temperature}")
    need(0 < rl.top_p <= 1, "rl.top_p", f"must be in (0, 1], got {rl.top_p}")
    need(rl.top_k >= 0, "rl.top_k", f"must be >= 0 (0 = off), got {rl.top_k}")
    need(rl.max_new_tokens >= 1, "rl.max_new_tokens", f"must be >= 1, got {rl.max_new_tokens}")
    last = -1
    for i, entry in enumerate(rl.max_new_tokens_schedule):
        key = f"rl.max_new_tokens_schedule[{i}]"
        need(len(entry) == 2, key, f"expected [step, tokens], got {entry}")
        need(entry[0] > last, key, f"steps must increase, got {entry[0]} after {last}")
        need(entry[1] >= 1, key, f"tokens must be >= 1, got {entry[1]}")
        last = entry[0]
    need(rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {rl.kl_coef}")
    need(rl.clip_low >= 0 and rl.clip_high >= 0, "rl.clip_low", "clip ranges must be >= 0")
    need(rl.ref_refresh_steps >= 0, "rl.ref_refresh_steps", f"must be >= 0, got {rl.ref_refresh_steps}")
    need(rl.loss_norm in RL_LOSS_NORMS, "rl.loss_norm", f"expected one of {RL_LOSS_NORMS}, got {rl.loss_norm!r}")
    need(not (rl.token_level_loss and rl.loss_norm == "constant"), "rl.token_level_loss",
         "conflicts with rl.loss_norm=constant")
    need(rl.overlong_buffer >= 0, "rl.overlong_buffer", f"must be >= 0, got {rl.overlong_buffer}")
    need(rl.tis_cap >= 1, "rl.tis_cap", f"must be >= 1, got {rl.tis_cap}")
    need(len(rl.rewards) > 0, "rl.rewards", "no reward function given")
    unknown = [n for n in rl.rewards if n not in REWARDS]
    need(not unknown, "rl.rewards", f"unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    from r1mega.judge import FALLBACKS, LANGUAGES

    need(rl.language in (None, *LANGUAGES), "rl.language", f"expected one of {LANGUAGES}, got {rl.language!r}")
    need(rl.answer_fallback in FALLBACKS, "rl.answer_fallback", f"expected one of {FALLBACKS}, got {rl.answer_fallback!r}")
    need(rl.log_rollouts_every >= 0, "rl.log_rollouts_every", f"must be >= 0, got {rl.log_rollouts_every}")
    need(rl.template in RL_TEMPLATES, "rl.template", f"expected one of {RL_TEMPLATES}, got {rl.template!r}")
    need(rl.log_rollouts >= 0, "rl.log_rollouts", f"must be >= 0, got {rl.log_rollouts}")
    need(bool(rl.prompts) or cfg.data.synthetic is not None, "rl.prompts",
         "no prompts: give rl.prompts=[file.jsonl, ...] or data.synthetic")
    for i, path in enumerate(rl.prompts):
        need(os.path.isfile(path), f"rl.prompts[{i}]", f"file not found: {path}")
    need(not rl.prompts or resuming or cfg.train.load is not None, "train.load",
         "GRPO on rl.prompts starts from a trained model: give train.load=CKPT (r1mega-convert import "
         "makes one from a Hugging Face model directory)")
    need(not rl.prompts or cfg.data.tokenizer is not None or cfg.train.load is not None, "data.tokenizer",
         "rl.prompts needs a tokenizer: data.tokenizer=DIR (or train.load=CKPT holding tokenizer.json)")
    need(rl.template not in ("chat", "chat_think") or bool(rl.prompts), "rl.template",
         "the chat template needs rl.prompts and a tokenizer with a chat_template")
    need(cfg.train.virtual_stages == 1, "train.virtual_stages",
         "GRPO generates on one model chunk per pipeline rank")
    return cfg


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    student: Optional[DenseConfig] = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    seed: int = 1234

    @property
    def active_model(self):
        """The model being trained: the dense student when `student:` is set, else `model:`."""
        return self.student if self.student is not None else self.model


def load_config(path: Optional[str | list[str]] = None, overrides: Optional[list[str]] = None) -> Config:
    """YAML file(s) (optional; later files override earlier ones, e.g. a student's shapes then a stage
    recipe) + dotted overrides -> typed Config. Unknown keys and bad types raise ConfigError."""
    schema = OmegaConf.structured(Config)
    paths = [path] if isinstance(path, str) else list(path or [])
    try:
        merged = schema
        for path in paths:
            if not os.path.exists(path):
                raise ConfigError("--config", f"file not found: {path}")
            if not os.path.isfile(path):
                raise ConfigError("--config", f"{path} is not a file (give the YAML file itself)")
            try:
                loaded = OmegaConf.load(path)
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError("--config", f"{path}: unreadable ({e})") from None
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f"{path}:{mark.line + 1}" if mark is not None else path
                raise ConfigError("--config", f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
            if not isinstance(loaded, DictConfig):
                raise ConfigError("--config", f"{path}: expected a mapping of sections (model:, data:, ...)")
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(item, "overrides take the form key.path=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(str(key), str(e).splitlines()[0]) from None
    assert isinstance(cfg, Config)
    return cfg


def resolve_parallel(par: ParallelConfig, world_size: int) -> ParallelConfig:
    """Fill in dp from the world size, after checking the layout divides it."""
    if world_size < 1:
        raise ConfigError("parallel", f"world size must be >= 1, got {world_size}")
    for name in ("tp", "pp", "ep", "cp"):
        if getattr(par, name) < 1:
            raise ConfigError(f"parallel.{name}", f"must be >= 1, got {getattr(par, name)}")
    if par.etp is not None and par.etp < 1:
        raise ConfigError("parallel.etp", f"must be >= 1, got {par.etp}")
    mp = par.tp * par.cp * par.pp
    names, sizes = ("tp x pp", f"{par.tp} x {par.pp}") if par.cp == 1 else \
        ("tp x cp x pp", f"{par.tp} x {par.cp} x {par.pp}")
    if par.dp is None:
        if world_size % mp:
            raise ConfigError("parallel", f"world size {world_size} is not divisible by {names} = {sizes}")
        dp = world_size // mp
    else:
        dp = par.dp
        if mp * dp != world_size:
            raise ConfigError("parallel.dp", f"world size {world_size} != {names} x dp = {sizes} x {dp}")
    out = ParallelConfig(**{f.name: getattr(par, f.name) for f in fields(par)})
    out.dp = dp
    return out


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(key, msg)


def _at_least(obj, section: str, minimum: float, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        _need(v is not None and math.isfinite(v) and v >= minimum, f"{section}.{name}",
              f"must be >= {minimum}, got {v}")


def _positive(obj, section: str, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        _need(v is not None and math.isfinite(v) and v > 0, f"{section}.{name}", f"must be > 0, got {v}")


def _one_of(value, key: str, choices: tuple) -> None:
    names = [str(c) for c in choices]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    _need(value in choices, key, f"expected {listed}, got {value!r}")


ROPE_KINDS = ("default", "yarn")
ROPE_SCALING_KEYS = ("type", "rope_type", "factor", "original_max_position_embeddings", "mscale", "mscale_all_dim",
                     "beta_fast", "beta_slow", "attention_factor", "truncate")
TOPK_METHODS = ("noaux_tc", "greedy", "group_limited_greedy")


# no real model comes near this; a larger value is a typo that would overflow tensor sizes
MAX_MODEL_DIM = 2 ** 31 - 1


def validate_model(m: ModelConfig) -> None:
    """Ranges and enums of the model keys alone (no layout)."""
    for f in fields(m):
        v = getattr(m, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            _need(v <= MAX_MODEL_DIM, f"model.{f.name}", f"{v} is beyond any supported size (at most {MAX_MODEL_DIM})")
    _positive(m, "model", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "max_position_embeddings", "rope_theta",
              "rms_norm_eps", "routed_scaling_factor")
    _at_least(m, "model", 0, "qk_nope_head_dim", "n_routed_experts", "n_shared_experts",
              "first_k_dense_replace", "num_mtp_layers", "initializer_range")
    _at_least(m, "model", 1, "moe_layer_freq", "n_group", "topk_group")
    if m.q_lora_rank is not None:
        _need(m.q_lora_rank > 0, "model.q_lora_rank", f"must be > 0 or null (plain q_proj), got {m.q_lora_rank}")
    _need(m.qk_rope_head_dim % 2 == 0, "model.qk_rope_head_dim",
          f"rotary dimension must be even, got {m.qk_rope_head_dim}")
    _one_of(m.scoring_func, "model.scoring_func", ("sigmoid", "softmax"))
    _one_of(m.topk_method, "model.topk_method", TOPK_METHODS)
    _need(m.hidden_act == "silu", "model.hidden_act", f"only silu is supported, got {m.hidden_act!r}")
    if m.rope_scaling is not None:
        for k in m.rope_scaling:
            _need(k in ROPE_SCALING_KEYS, "model.rope_scaling", f"unknown key {k!r} (known: {', '.join(ROPE_SCALING_KEYS)})")
        kind = m.rope_scaling.get("rope_type", m.rope_scaling.get("type", "default"))
        _one_of(kind, "model.rope_scaling.type", ROPE_KINDS)
        if kind == "yarn":
            orig = m.rope_scaling.get("original_max_position_embeddings")
            _need(isinstance(orig, int) and orig > 0, "model.rope_scaling.original_max_position_embeddings",
                  f"yarn needs a positive integer, got {orig!r}")
            factor = m.rope_scaling.get("factor")
            _need(factor is None or (isinstance(factor, (int, float)) and factor > 0), "model.rope_scaling.factor",
                  f"must be > 0, got {factor!r}")
    if m.n_routed_experts > 0:
        _need(m.moe_intermediate_size > 0, "model.moe_intermediate_size",
              f"must be > 0 for a model with routed experts, got {m.moe_intermediate_size}")
        _need(m.num_experts_per_tok >= 1, "model.num_experts_per_tok",
              f"must be >= 1 for a model with routed experts, got {m.num_experts_per_tok}")


def validate_student(s: DenseConfig, par: ParallelConfig) -> None:
    """A dense student x layout. KV heads need not divide tp: they are then replicated over TP."""
    need = _need

    need(s.arch in DENSE_ARCHS, "student.arch", f"expected one of {', '.join(DENSE_ARCHS)}, got {s.arch!r}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        need(getattr(s, key) > 0, f"student.{key}", f"must be > 0, got {getattr(s, key)}")
    need(s.num_heads % s.num_kv_heads == 0, "student.num_kv_heads",
         f"{s.num_heads} attention heads do not split into groups of {s.num_kv_heads} KV heads")
    need(s.head_size % 2 == 0, "student.head_dim", f"rotary dimension must be even, got {s.head_size}")
    need(s.num_heads % par.tp == 0, "student.num_heads",
         f"{s.num_heads} attention heads are not divisible by parallel.tp={par.tp}")
    need(s.vocab_size % par.tp == 0, "student.vocab_size",
         f"vocab_size {s.vocab_size} is not divisible by parallel.tp={par.tp}")
    need(s.intermediate_size % par.tp == 0, "student.intermediate_size",
         f"{s.intermediate_size} is not divisible by parallel.tp={par.tp}")
    need(s.num_layers >= par.pp, "parallel.pp",
         f"{s.num_layers} layers cannot fill {par.pp} pipeline stages (student.num_layers < parallel.pp)")
    if par.pp_layers is not None:
        need(len(par.pp_layers) == par.pp and all(n >= 1 for n in par.pp_layers)
             and sum(par.pp_layers) == s.num_layers, "parallel.pp_layers",
             f"{par.pp_layers} must give each of {par.pp} stages >= 1 layer, {s.num_layers} in all")
    need(par.ep == 1 and par.expert_tp in (1, par.tp), "parallel.ep", "a dense student has no experts to shard")
    need(s.hidden_act == "silu", "student.hidden_act", f"only silu is supported, got {s.hidden_act!r}")
    if s.arch == "qwen2":
        need(s.qkv_bias and not s.o_bias, "student.qkv_bias", "Qwen2 has q/k/v biases and no o_proj bias")
    else:
        need(s.qkv_bias == s.o_bias, "student.o_bias",
             f"{s.arch}'s attention_bias sets q/k/v and o_proj biases together")
    kind = (s.rope_scaling or {}).get("rope_type", (s.rope_scaling or {}).get("type", "default"))
    need(kind in ("default", "linear", "llama3", "yarn"), "student.rope_scaling",
         f"unsupported rope type {kind!r} (default, linear, llama3, yarn)")


def validate(cfg: Config, world_size: int) -> Config:
    """Cross-field checks of model x layout. Raises ConfigError naming the key; allocates nothing."""
    validate_model(cfg.model)
    m, par = cfg.model, resolve_parallel(cfg.parallel, world_size)
    tp, pp, ep, etp = par.tp, par.pp, par.ep, par.expert_tp
    need = _need
    _need(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")

    if cfg.student is not None:
        validate_student(cfg.student, par)
        cfg.parallel = par
        return cfg
    need(m.num_heads % tp == 0, "model.num_heads",
         f"{m.num_heads} attention heads are not divisible by parallel.tp={tp}")
    need(m.vocab_size % tp == 0, "model.vocab_size",
         f"vocab_size {m.vocab_size} is not divisible by parallel.tp={tp}")
    need(m.intermediate_size % tp == 0, "model.intermediate_size",
         f"{m.intermediate_size} is not divisible by parallel.tp={tp}")
    need(m.num_layers >= pp, "parallel.pp",
         f"{m.num_layers} layers cannot fill {pp} pipeline stages (model.num_layers < parallel.pp)")
    if par.pp_layers is not None:
        need(len(par.pp_layers) == pp, "parallel.pp_layers",
             f"has {len(par.pp_layers)} entries for {pp} pipeline stages")
        need(all(n >= 1 for n in par.pp_layers), "parallel.pp_layers", "every stage needs >= 1 layer")
        need(sum(par.pp_layers) == m.num_layers, "parallel.pp_layers",
             f"sums to {sum(par.pp_layers)} but model.num_layers = {m.num_layers}")
    if m.n_routed_experts > 0:
        need(m.n_routed_experts % ep == 0, "model.n_routed_experts",
             f"{m.n_routed_experts} experts are not divisible by parallel.ep={ep}")
        need(m.moe_intermediate_size % etp == 0, "model.moe_intermediate_size",
             f"{m.moe_intermediate_size} is not divisible by expert tensor parallel size {etp}")
        if m.n_shared_experts:
            need((m.moe_intermediate_size * m.n_shared_experts) % tp == 0, "model.moe_intermediate_size",
                 f"shared-expert width {m.moe_intermediate_size * m.n_shared_experts} "
                 f"is not divisible by parallel.tp={tp}")
        need(m.n_routed_experts % m.n_group == 0, "model.n_group",
             f"{m.n_routed_experts} experts do not split into {m.n_group} groups")
        need(1 <= m.topk_group <= m.n_group, "model.topk_group",
             f"must be in [1, n_group={m.n_group}], got {m.topk_group}")
        per_group = m.n_routed_experts // m.n_group
        need(m.num_experts_per_tok <= per_group * m.topk_group, "model.num_experts_per_tok",
             f"{m.num_experts_per_tok} exceeds the {per_group * m.topk_group} experts in the "
             f"{m.topk_group} selected groups")
        if m.scoring_func == "sigmoid" and m.n_group > 1:
            need(per_group >= 2, "model.n_group", "sigmoid group scores sum the top-2 of each group")
        # Expert layout: etp x ep x edp must tile the tp x cp x dp ranks of one pipeline stage.
        need((tp * par.cp * par.dp) % (etp * ep) == 0, "parallel.ep",
             f"expert tp x ep = {etp} x {ep} does not divide the {tp * par.cp * par.dp} ranks "
             f"(tp x cp x dp) of a pipeline stage")
    elif ep > 1:
        raise ConfigError("parallel.ep", f"ep={ep} but the model has no routed experts")
    cfg.parallel = par
    return cfg


def validate_sequence_split(cfg: Config) -> None:
    """data.seq_length must split into the layout's context-/sequence-parallel pieces (the dry run
    asks this too, so it never plans a length the run refuses)."""
    par, n = cfg.parallel, cfg.data.seq_length
    _need(n % par.sequence_divisor == 0, "data.seq_length",
          f"{'context' if par.cp > 1 else 'sequence'} parallel needs seq_length {n} divisible by "
          f"{par.sequence_divisor_text()}")


def validate_training(cfg: Config, world_size: int, needs_data: bool = True) -> Config:
    """validate() plus the batch / schedule / data / optimizer rules of a training run.
    needs_data=False: GRPO, whose data are rl.prompts (see validate_rl)."""
    cfg = validate(cfg, world_size)
    par, d, t, o = cfg.parallel, cfg.data, cfg.train, cfg.optim
    tp, pp = par.tp, par.pp
    need = _need

    _at_least(d, "data", 1, "seq_length", "micro_batch_size", "global_batch_size", "synthetic_docs")
    active, section = cfg.active_model, "student" if cfg.student is not None else "model"
    need(d.seq_length <= active.max_position_embeddings, "data.seq_length",
         f"{d.seq_length} exceeds {section}.max_position_embeddings={active.max_position_embeddings}; shorten "
         f"the sequences or extend the context (rope scaling and a larger max_position_embeddings)")
    if d.synthetic is not None:
        _one_of(d.synthetic, "data.synthetic", ("arithmetic", "addition"))
        for name in ("paths", "tokenizer"):  # the built corpus brings its own files: yours would be ignored
            need(not getattr(d, name), f"data.{name}", f"is set together with data.synthetic={d.synthetic}, "
                 f"which builds its own corpus and tokenizer; set data.synthetic=null to use your {name}")
    if d.weights is not None:
        need(len(d.weights) == len(d.paths), "data.weights",
             f"has {len(d.weights)} entries for {len(d.paths)} data.paths")
        for i, w in enumerate(d.weights):
            need(math.isfinite(w) and w >= 0, f"data.weights[{i}]", f"must be a finite weight >= 0, got {w}")
        need(sum(d.weights) > 0, "data.weights", "all weights are 0: nothing to sample from")
    _at_least(o, "optim", 0, "lr", "min_lr", "warmup_steps", "weight_decay", "clip_grad")
    _positive(o, "optim", "eps")
    _one_of(o.decay, "optim.decay", ("cosine", "constant", "linear"))
    if o.decay != "constant":
        need(o.min_lr <= o.lr, "optim.min_lr",
             f"{o.min_lr} is above optim.lr={o.lr}, but optim.decay={o.decay} decays from lr to min_lr")
    for name in ("beta1", "beta2"):
        v = getattr(o, name)
        need(0 <= v < 1, f"optim.{name}", f"must be in [0, 1), got {v}")
    _at_least(t, "train", 0, "mtp_weight", "balance_alpha", "bias_update_rate", "save_interval",
              "max_consecutive_skips")
    _at_least(t, "train", 1, "log_interval")
    if t.peak_tflops is not None:
        _positive(t, "train", "peak_tflops")
    need(bool(t.run_dir), "train.run_dir", "must name a directory")
    arch = {f.name for f in fields(ModelConfig)}
    for k in t.allow_arch_change:
        need(k in arch, "train.allow_arch_change", f"{k!r} is not a model key (one of {', '.join(sorted(arch))})")
    need(t.schedule in ("gpipe", "1f1b", "interleaved"), "train.schedule",
         f"expected gpipe, 1f1b or interleaved, got {t.schedule!r}")
    need(t.virtual_stages >= 1, "train.virtual_stages", "must be >= 1")
    if t.virtual_stages > 1:
        need(t.schedule in ("interleaved", "gpipe"), "train.schedule",
             "virtual_stages > 1 needs the interleaved (or gpipe) schedule")
        need(cfg.active_model.num_layers >= pp * t.virtual_stages, "train.virtual_stages",
             f"{cfg.active_model.num_layers} layers cannot fill pp x virtual_stages = {pp * t.virtual_stages} stages")
    need(t.dtype in ("float32", "bfloat16"), "train.dtype", f"expected float32 or bfloat16, got {t.dtype!r}")
    per_step = par.dp * d.micro_batch_size
    need(d.global_batch_size % per_step == 0, "data.global_batch_size",
         f"{d.global_batch_size} is not a multiple of dp x micro_batch_size = {par.dp} x {d.micro_batch_size}")
    validate_sequence_split(cfg)
    if t.schedule == "interleaved" and pp > 1:
        micro = d.global_batch_size // per_step
        need(micro % pp == 0, "data.global_batch_size",
             f"the interleaved schedule needs microbatches per DP rank ({micro}) divisible by pp={pp}")
    need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    need(t.recompute in RECOMPUTE_MODES, "train.recompute",
         f"expected one of {', '.join(RECOMPUTE_MODES)}, got {t.recompute!r}")
    unknown = [x for x in t.recompute_modules if x not in SELECTIVE_RECOMPUTE_MODULES]
    need(not unknown, "train.recompute_modules",
         f"unknown {unknown}; choose from {', '.join(SELECTIVE_RECOMPUTE_MODULES)}")
    need(t.fp8 in ("none", "blockwise"), "train.fp8", f"expected none or blockwise, got {t.fp8!r}")
    need(t.fp8_backend in ("auto", "emulated", "te"), "train.fp8_backend",
         f"expected auto, emulated or te, got {t.fp8_backend!r}")
    need(t.fp8_backend != "te", "train.fp8_backend",
         "the Transformer Engine backend is not built in yet; use auto or emulated")
    need(t.fp8_block >= 1, "train.fp8_block", f"must be >= 1, got {t.fp8_block}")
    need(not needs_data or bool(d.paths) or d.synthetic is not None, "data.paths", "no data: give data.paths or data.synthetic")
    need(t.dsa_stage in (None, "dense_warmup", "sparse"), "train.dsa_stage",
         f"expected dense_warmup, sparse or null, got {t.dsa_stage!r}")
    need(t.dsa_stage is None or hasattr(cfg.active_model, "index_topk"), "train.dsa_stage",
         f"{t.dsa_stage} trains DeepSeek-V3.2's indexer; this model has none (model_type deepseek_v32)")
    need(t.index_loss_weight >= 0, "train.index_loss_weight", f"must be >= 0, got {t.index_loss_weight}")
    return cfg
