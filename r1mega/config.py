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

    @classmethod
    def from_hf(cls, source: str | dict) -> "ModelConfig":
        """Read a Hugging Face DeepSeek-V3/R1/V2(-Lite) `config.json` (path, directory or dict)."""
        where = "config.json"
        if isinstance(source, str):
            where = os.path.join(source, "config.json") if os.path.isdir(source) else source
            try:
                with open(where) as f:
                    source = json.load(f)
            except OSError as e:
                raise ConfigError(where, f"cannot read: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise ConfigError(where, f"not valid JSON ({e.msg} at line {e.lineno})") from None
        try:
            return cls._from_hf_dict(dict(source))
        except KeyError as e:
            raise ConfigError(where, f"missing key {e.args[0]!r} that a DeepSeek config must have") from None

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
    pp_layers: Optional[list[int]] = None  # layers per stage for uneven splits; null: even split

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp


@dataclass
class DataConfig:
    seq_length: int = 16
    micro_batch_size: int = 2
    global_batch_size: int = 4
    # pretrain: indexed dataset prefixes (<prefix>.bin/.idx); sft: JSONL chat files (the first is used)
    paths: list[str] = field(default_factory=list)
    weights: Optional[list[float]] = None  # blending weights for `paths` (pretrain)
    tokenizer: Optional[str] = None  # tokenizer.json / directory / sentencepiece .model
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
    # FP8 linears (DeepSeek-V3's blockwise recipe): none | blockwise
    fp8: str = "none"
    fp8_backend: str = "auto"  # auto | emulated | te (auto: Transformer Engine where built and usable)
    fp8_block: int = 128  # tile length: 1 x block for activations/gradients, block x block for weights
    fp8_pow2_scales: bool = False  # round scales down to powers of two


@dataclass
class DenseConfig:
    """A dense student (Qwen2/Qwen2.5, Llama 3) for R1 distillation: GQA attention + SwiGLU FFN."""

    arch: str = "qwen2"  # qwen2 | llama
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # default hidden_size // num_heads
    qkv_bias: bool = True  # Qwen2 has q/k/v biases, Llama none
    tie_word_embeddings: bool = False
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768


@dataclass
class RLConfig:
    """GRPO. Defaults are DeepSeek-R1-Zero's published settings (DeepSeek-R1, Nature version)."""

    group_size: int = 16  # samples per question
    prompts_per_step: int = 32  # questions per step (512 outputs per step)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32768
    kl_coef: float = 0.001  # k3 estimator against the reference policy; 0 disables the KL term
    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: asymmetric "clip-higher"; R1's first RL stage uses 10
    ref_refresh_steps: int = 400
    updates_per_rollout: int = 1  # optimizer steps on each rollout batch (old log-probs kept)
    token_level_loss: bool = False  # normalise by all tokens of the batch instead of per sequence
    drop_equal_reward_groups: bool = False
    routing_replay: bool = False
    rewards: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    language: Optional[str] = None  # target language for the language-consistency reward
    # run code rewards without the isolated sandbox where it cannot be set up (only for trusted code)
    unsafe_code_sandbox: bool = False


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


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """YAML file (optional) + dotted overrides -> typed Config. Unknown keys and bad types raise ConfigError."""
    schema = OmegaConf.structured(Config)
    try:
        merged = schema
        if path is not None:
            if not os.path.exists(path):
                raise ConfigError("--config", f"file not found: {path}")
            try:
                loaded = OmegaConf.load(path)
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
    for name in ("tp", "pp", "ep"):
        if getattr(par, name) < 1:
            raise ConfigError(f"parallel.{name}", f"must be >= 1, got {getattr(par, name)}")
    if par.etp is not None and par.etp < 1:
        raise ConfigError("parallel.etp", f"must be >= 1, got {par.etp}")
    mp = par.tp * par.pp
    if par.dp is None:
        if world_size % mp:
            raise ConfigError(
                "parallel", f"world size {world_size} is not divisible by tp x pp = {par.tp} x {par.pp}"
            )
        dp = world_size // mp
    else:
        dp = par.dp
        if par.tp * par.pp * dp != world_size:
            raise ConfigError(
                "parallel.dp",
                f"world size {world_size} != tp x pp x dp = {par.tp} x {par.pp} x {dp}",
            )
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


def validate_model(m: ModelConfig) -> None:
    """Ranges and enums of the model keys alone (no layout)."""
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


def validate(cfg: Config, world_size: int) -> Config:
    """Cross-field checks of model x layout. Raises ConfigError naming the key; allocates nothing."""
    validate_model(cfg.model)
    m, par = cfg.model, resolve_parallel(cfg.parallel, world_size)
    tp, pp, ep, etp = par.tp, par.pp, par.ep, par.expert_tp
    need = _need
    _need(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
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
        # Expert layout: etp x ep x edp must tile the tp x dp ranks of one pipeline stage.
        need((tp * par.dp) % (etp * ep) == 0, "parallel.ep",
             f"expert tp x ep = {etp} x {ep} does not divide the {tp * par.dp} ranks "
             f"(tp x dp) of a pipeline stage")
    elif ep > 1:
        raise ConfigError("parallel.ep", f"ep={ep} but the model has no routed experts")
    cfg.parallel = par
    return cfg


def validate_training(cfg: Config, world_size: int) -> Config:
    """validate() plus the batch / schedule / data / optimizer rules of a training run."""
    cfg = validate(cfg, world_size)
    m, par, d, t, o = cfg.model, cfg.parallel, cfg.data, cfg.train, cfg.optim
    tp, pp = par.tp, par.pp
    need = _need

    _at_least(d, "data", 1, "seq_length", "micro_batch_size", "global_batch_size", "synthetic_docs")
    if d.synthetic is not None:
        _one_of(d.synthetic, "data.synthetic", ("arithmetic", "addition"))
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
        need(m.num_layers >= pp * t.virtual_stages, "train.virtual_stages",
             f"{m.num_layers} layers cannot fill pp x virtual_stages = {pp * t.virtual_stages} stages")
    need(t.dtype in ("float32", "bfloat16"), "train.dtype", f"expected float32 or bfloat16, got {t.dtype!r}")
    per_step = par.dp * d.micro_batch_size
    need(d.global_batch_size % per_step == 0, "data.global_batch_size",
         f"{d.global_batch_size} is not a multiple of dp x micro_batch_size = {par.dp} x {d.micro_batch_size}")
    if par.sp and tp > 1:
        need(d.seq_length % tp == 0, "data.seq_length",
             f"sequence parallel needs seq_length {d.seq_length} divisible by tp={tp}")
    if t.schedule == "interleaved" and pp > 1:
        micro = d.global_batch_size // per_step
        need(micro % pp == 0, "data.global_batch_size",
             f"the interleaved schedule needs microbatches per DP rank ({micro}) divisible by pp={pp}")
    need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    need(t.fp8 in ("none", "blockwise"), "train.fp8", f"expected none or blockwise, got {t.fp8!r}")
    need(t.fp8_backend in ("auto", "emulated", "te"), "train.fp8_backend",
         f"expected auto, emulated or te, got {t.fp8_backend!r}")
    need(t.fp8_backend != "te", "train.fp8_backend",
         "the Transformer Engine backend is not built in yet; use auto or emulated")
    need(t.fp8_block >= 1, "train.fp8_block", f"must be >= 1, got {t.fp8_block}")
    need(cfg.student is None, "student", "training dense students is not supported yet; "
         "`r1mega plan` sizes them and their configs document the distillation recipe")
    need(bool(d.paths) or d.synthetic is not None, "data.paths", "no data: give data.paths or data.synthetic")
    return cfg
