"""Typed configuration: dataclasses, YAML files, dotted CLI overrides, up-front validation.

OmegaConf does the merging (YAML + `a.b=c` overrides onto typed dataclasses); it already rejects
unknown keys and wrong types naming the full key. `validate()` adds the cross-field rules of a
parallel layout, so a bad launch fails before any weight is allocated.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r1mega.checks import at_least as _at_least, need as _need, one_of as _one_of, positive as _positive
from r1mega.errors import ConfigError  # noqa: F401  (re-exported: `from r1mega.config import ConfigError`)
from r1mega.models.family import DEFAULT_FAMILY, families, family_named, family_of_config, recompute_units
from r1mega.parallel.config import ParallelConfig  # noqa: F401  (the parallel: section, beside its owner)
from r1mega.parallel.recompute import RECOMPUTE_MODES

# The model sections live with their families (r1mega/models/<family>/config.py). These two names
# stay for existing callers: the default family's section and the dense family's (`student:`).
ModelConfig = family_named(DEFAULT_FAMILY).config_cls
DenseConfig = family_named("dense").config_cls



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
    # "arithmetic" | "addition" (the demo) | "sum3" (the pipeline): build the corpus, tokenizer and
    # indexed files under cache_dir when missing (r1mega/data/synthetic.py)
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
    # resume from the run's own checkpoint on other data files, data.seq_length or GRPO rl.prompts files
    # (refused by default)
    allow_data_change: bool = False
    recompute: str = "none"  # none | selective | full (activation recompute, parallel/recompute.py)
    # the parts selective recompute runs again; default: every part any family names (its recompute_units)
    recompute_modules: list[str] = field(default_factory=lambda: list(recompute_units()))
    # FP8 linears (DeepSeek-V3's blockwise recipe): none | blockwise
    fp8: str = "none"
    fp8_backend: str = "auto"  # auto | emulated | te (auto: Transformer Engine where built and usable)
    fp8_block: int = 128  # tile length: 1 x block for activations/gradients, block x block for weights
    fp8_pow2_scales: bool = False  # round scales down to powers of two
    # DEPRECATED older names of model families' training keys, now in the family's `model:` section
    # (its `training_keys`); still read: when set they win over the model's, with a warning, and a
    # family without the key ignores a number and refuses anything else (apply_train_aliases)
    mtp_weight: Optional[float] = None
    balance_alpha: Optional[float] = None
    bias_update_rate: Optional[float] = None
    dsa_stage: Optional[str] = None
    index_loss_weight: Optional[float] = None


# the smallest sampling temperature besides 0 (greedy): below it logits / T outgrow float32 (inf at ~1e-38,
# NaN log-probs) long before, and the draw is already greedy's
MIN_TEMPERATURE = 1e-6


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
    updates_per_rollout: int = 1  # epochs over all of a rollout's mini-batches (old log-probs kept), a step each
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
    # the update without padding: rollout sequences packed whole into rows of pack_tokens tokens
    # (0: the longest sequence of the minibatch), each its own document; false: left-padded rows
    packed_update: bool = True
    pack_tokens: int = 0
    # the rollout scheduler's budgets per rank (0: none): rows decoding at once, and cache tokens (past
    # it the youngest rows are preempted and recomputed later; the samples do not change)
    rollout_max_rows: int = 0
    rollout_cache_tokens: int = 0
    # DAPO dynamic sampling: draw more prompts (at most dynamic_sampling_max_draws extra rollouts'
    # worth) until every group of the step has rewards that are not all equal
    dynamic_sampling: bool = False
    dynamic_sampling_max_draws: int = 4
    entropy_coef: float = 0.0  # bonus on the token entropy of softmax(logits / T) (0: logged only)
    # DeepSeek-V3.2's refinements: k3 weighted by pi_theta / pi_old; off-policy sequence masking
    # (null: off); the sampler's top-p/top-k support applied to the old, current and reference policies
    unbiased_kl: bool = False
    opsm_delta: Optional[float] = None
    keep_sampling_mask: bool = False
    # the sampler's log-probs bitwise the trainer's: batch-invariant kernels in rollout and training
    # (r1mega/kernels/batch_invariant.py); DeepSeek-V3 family, plain torch kernels, cp 1
    exact_rollouts: bool = False
    # rollout decoding steps of few rows (the long tail) as one compiled graph (torch.compile; one
    # process only, else eager): samples equal the eager step's within float rounding, not bitwise
    compile_decode: bool = False
    rewards: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    language: Optional[str] = None  # target language for the language-consistency reward (default en)
    # final answer when there is neither <answer> nor \boxed after the thought (r1mega/judge/answers.py)
    answer_fallback: str = "auto"  # auto ("A:" line, else last number) | a_colon | last_number | none
    # prompt datasets: JSONL files, one problem per line (see r1mega/data/prompts.py); empty: data.synthetic
    prompts: list[str] = field(default_factory=list)
    template: str = "raw"  # r1_zero | chat | chat_think | raw (r1mega/data/prompts.py)
    log_rollouts: int = 4  # sample rollouts appended to <run_dir>/rollouts.jsonl per step
    log_rollouts_every: int = 10  # steps between wandb tables of those rollouts (train.wandb; 0: none)
    # run code rewards without the isolated sandbox where it cannot be set up (only for trusted code)
    unsafe_code_sandbox: bool = False
    # rollouts with self-speculative decoding: "mtp" (the policy's own MTP module drafts draft_tokens
    # tokens per row and step; same distribution, inference/speculative.py); null: plain decoding
    speculative: Optional[str] = None
    draft_tokens: int = 1
    mtp_weight: float = 0.0  # the MTP loss on the rollouts beside the GRPO loss (keeps the draft on-policy)


RL_TEMPLATES = ("r1_zero", "chat", "chat_think", "raw")
RL_LOSS_NORMS = ("sequence", "token", "constant")


def validate_rl(cfg: "Config", world_size: int, resuming: bool = False, rewards=None) -> "Config":
    """The rl.* rules of a GRPO run (after validate_training). Raises ConfigError naming the key.
    resuming: the run directory holds the run's own checkpoint (no train.load needed).
    rewards: the reward names there are (r1mega/rl/rewards.py's registry; GRPO passes it), checked when given."""

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
    need(rl.temperature >= MIN_TEMPERATURE and math.isfinite(rl.temperature), "rl.temperature",
         f"must be >= {MIN_TEMPERATURE:g} (log-probs are of softmax(logits / T); smaller overflows float32), "
         f"got {rl.temperature}")
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
    # the penalty starts overlong_buffer tokens before the budget: past the whole budget it would punish
    # every response, an empty one too (DAPO's reward manager asserts the same)
    budgets = [("rl.max_new_tokens", rl.max_new_tokens)] + [
        (f"rl.max_new_tokens_schedule[{i}]", entry[1]) for i, entry in enumerate(rl.max_new_tokens_schedule)]
    for where, budget in budgets:
        need(rl.overlong_buffer <= budget, "rl.overlong_buffer",
             f"{rl.overlong_buffer} is longer than the response budget {where} = {budget}")
    need(math.isfinite(rl.overlong_penalty) and 0 <= rl.overlong_penalty <= 1e6, "rl.overlong_penalty",
         f"must be a finite number in [0, 1e6] (a reward subtracted), got {rl.overlong_penalty}")
    for key in ("kl_coef", "clip_low", "clip_high", "tis_cap", "top_p"):
        need(math.isfinite(getattr(rl, key)), f"rl.{key}", f"must be a finite number, got {getattr(rl, key)}")
    need(rl.tis_cap >= 1, "rl.tis_cap", f"must be >= 1, got {rl.tis_cap}")
    need(rl.pack_tokens >= 0, "rl.pack_tokens", f"must be >= 0 (0 = the longest sequence), got {rl.pack_tokens}")
    for key in ("rollout_max_rows", "rollout_cache_tokens"):
        need(getattr(rl, key) >= 0, f"rl.{key}", f"must be >= 0 (0 = no limit), got {getattr(rl, key)}")
    need(rl.dynamic_sampling_max_draws >= 0, "rl.dynamic_sampling_max_draws",
         f"must be >= 0, got {rl.dynamic_sampling_max_draws}")
    need(rl.entropy_coef >= 0 and math.isfinite(rl.entropy_coef), "rl.entropy_coef",
         f"must be a finite number >= 0, got {rl.entropy_coef}")
    need(rl.opsm_delta is None or (rl.opsm_delta >= 0 and math.isfinite(rl.opsm_delta)), "rl.opsm_delta",
         f"must be a finite number >= 0 (or null: off), got {rl.opsm_delta}")
    need(not rl.keep_sampling_mask or rl.top_p < 1 or rl.top_k > 0, "rl.keep_sampling_mask",
         "the sampler truncates nothing (rl.top_p=1, rl.top_k=0): there is no support to keep")
    for key in ("kl_coef", "clip_low", "clip_high", "tis_cap", "overlong_penalty"):
        need(math.isfinite(getattr(rl, key)), f"rl.{key}", f"must be finite, got {getattr(rl, key)}")
    refused = family_of_config(cfg.active_model).training.rl_refusal(cfg.active_model)  # (key, why) or None
    if refused is not None:
        need(False, *refused)
    if rl.exact_rollouts:
        need(cfg.train.fp8 == "none", "rl.exact_rollouts", "needs train.fp8=none (the FP8 kernels are not batch-invariant)")
        need(par.cp == 1, "rl.exact_rollouts", "needs parallel.cp=1")
        refusal = family_of_config(cfg.active_model).exact_rollouts_refusal(cfg.active_model)
        need(refusal is None, "rl.exact_rollouts", refusal or "")
        need(not rl.compile_decode, "rl.compile_decode",
             "cannot be on with rl.exact_rollouts (its rollouts take the bitwise batch-invariant eager step)")
    rows = rl.prompts_per_step // max(par.dp, 1) * rl.group_size
    need(rl.packed_update or rows % cfg.data.micro_batch_size == 0, "data.micro_batch_size",
         f"{cfg.data.micro_batch_size} does not divide the {rows} rows of a step on each data-parallel rank "
         f"(prompts_per_step / dp x group_size = {rl.prompts_per_step} / {par.dp} x {rl.group_size})")
    need(len(rl.rewards) > 0, "rl.rewards", "no reward function given")
    unknown = [n for n in rl.rewards if rewards is not None and n not in rewards]
    need(not unknown, "rl.rewards", f"unknown reward(s) {unknown}; choose from {sorted(rewards or ())}")
    need(len(set(rl.rewards)) == len(rl.rewards), "rl.rewards", f"lists a reward twice: {rl.rewards}")
    # accuracy scores a problem that has tests by running them (the code reward): both would pay a
    # passing program twice and a problem with an answer no more
    need(not {"accuracy", "code"} <= set(rl.rewards), "rl.rewards",
         "lists both accuracy and code; accuracy already scores a problem with tests by running them, "
         "so a passing program would be paid twice: keep accuracy (answers and tests) or code (tests only)")
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
    need(rl.speculative in (None, "mtp"), "rl.speculative", f"expected mtp or null, got {rl.speculative!r}")
    from r1mega.inference.speculative import MAX_DRAFT_TOKENS

    need(rl.draft_tokens >= 1, "rl.draft_tokens", f"must be >= 1, got {rl.draft_tokens}")
    need(rl.draft_tokens <= MAX_DRAFT_TOKENS, "rl.draft_tokens",
         f"must be <= {MAX_DRAFT_TOKENS}, got {rl.draft_tokens}")
    need(rl.mtp_weight >= 0 and math.isfinite(rl.mtp_weight), "rl.mtp_weight",
         f"must be a finite number >= 0, got {rl.mtp_weight}")
    why = family_of_config(cfg.active_model).draft_refusal(cfg.active_model)
    for key, on in (("rl.speculative", rl.speculative is not None), ("rl.mtp_weight", rl.mtp_weight > 0)):
        need(not on or why is None, key, f"needs the model's MTP module, but {why}")
    return cfg


@dataclass
class Config:
    # the model: its family's config (`model.family` names it; default: the registry's default family)
    model: Any = None
    student: Any = None  # older name of a dense-family `model:` section; wins over `model:` when set
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    seed: int = 1234

    def __post_init__(self):
        if self.model is None:
            self.model = family_named(DEFAULT_FAMILY).config_cls()

    @property
    def active_model(self):
        """The model being trained: the dense model of `student:` when set, else `model:`."""
        return self.student if self.student is not None else self.model

    @property
    def model_section(self) -> str:
        """The section the active model was given in, for error messages."""
        return "student" if self.student is not None else "model"


def build_config(model_cfg, parallel: Optional[ParallelConfig] = None) -> Config:
    """A run Config whose active model is `model_cfg`, of any family (for verify-hf, tools and tests)."""
    return Config(model=model_cfg, parallel=parallel or ParallelConfig())


def _load_yaml(path: str) -> DictConfig:
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
    if "model_type" in loaded:  # a model's own config.json: its keys would each be refused as unknown
        raise ConfigError("--config", f"{path} is a Hugging Face config.json, not an r1mega config; import the model "
                                      f"(r1mega-convert import --hf-dir DIR --out CKPT) and give train.load=CKPT: a "
                                      f"config without a model section takes family and shapes from it (e.g. --config "
                                      f"configs/stage/r1_zero.yaml train.load=CKPT)")
    return loaded


def _named_family(pieces: list[DictConfig]) -> str:
    """The family the `model:` section names (the last piece to name one wins), else the default."""
    name = DEFAULT_FAMILY
    for piece in pieces:
        model = piece.get("model") if "model" in piece else None
        if isinstance(model, DictConfig) and "family" in model:
            name = model.family
    if not isinstance(name, str):
        raise ConfigError("model.family", f"expected a family name, got {name!r}")
    return name


def _drop_foreign_weights(piece: DictConfig, family) -> None:
    """A number under `model:` that is another family's training key (a loss weight or rate, e.g. a stage
    config's mtp_weight) is ignored by a family without it, as its deprecated train.* name is; any other
    value (a training mode such as dsa_stage) stays, to be refused as a key the family does not have."""
    model = piece.get("model") if "model" in piece else None
    if not isinstance(model, DictConfig):
        return
    foreign = {k for f in families() for k in f.training_keys} - set(family.training_keys)
    for key in sorted(foreign & set(model.keys())):
        v = model[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            model.pop(key)


def _other_familys_key(key: str, family) -> str:
    """For an unknown `model.<key>` that another family has (a V3.2 checkpoint's `model.dsa_stage` with no
    `model.family`): which families have it and how to name one; else nothing."""
    section, _, name = key.partition(".")
    if section != "model" or not name or "." in name or name in {x.name for x in dataclasses.fields(family.config_cls)}:
        return ""  # not a model key, or the section's own (a bad value: OmegaConf's message says so)
    owners = [f.name for f in families() if f.name != family.name and name in
              {x.name for x in dataclasses.fields(f.config_cls)}]
    if not owners:
        return ""
    return (f"; it is a key of family {' / '.join(owners)}, while this model: section is {family.name}'s"
            f"{' (the default)' if family.name == DEFAULT_FAMILY else ''}: name the family too, e.g. "
            f"model.family={owners[0]}")


# a student given by overrides alone must say at least this much of its shape: without it a stray
# `student.x=...` made the run train a default-shaped dense student (vocab 151,936, hidden 1,536)
STUDENT_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads")


def _check_active_section(files: list, overrides: list[str]) -> None:
    """Overrides of the section the run does not train are refused by key: `model.*` beside a student
    (never read), and a student made by overrides alone that leaves its shape at the defaults."""
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    given = {k.split(".", 1)[1].split(".")[0] for k in keys if k.startswith("student.")}
    in_files = any("student" in p and p.student is not None for p in files)
    if not (in_files or given):
        return
    for k in keys:
        if k.startswith("model."):
            raise ConfigError(k, "this run trains its `student:` (a dense student), which does not read `model.*` "
                                 f"keys; set student.{k.split('.', 1)[1]} instead")
    missing = [k for k in STUDENT_SHAPE_KEYS if k not in given]
    if not in_files and missing:
        raise ConfigError(f"student.{missing[0]}", f"`student.*` overrides make this run train a dense student "
                          f"instead of `model:`, but leave its shape at the defaults: give student."
                          f"{', student.'.join(missing)} too, or start from a student config (configs/model/students/)")


def load_config(path: Optional[str | list[str]] = None, overrides: Optional[list[str]] = None) -> Config:
    """YAML file(s) (optional; later files override earlier ones, e.g. a student's shapes then a stage
    recipe) + dotted overrides -> typed Config. Unknown keys and bad types raise ConfigError. The
    `model:` section takes the keys of the family it names (`model.family`); `student:` the dense family's."""
    paths = [path] if isinstance(path, str) else list(path or [])
    try:
        pieces = [_load_yaml(p) for p in paths]
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(item, "overrides take the form key.path=value")
        if overrides:
            pieces.append(OmegaConf.from_dotlist(list(overrides)))
        _check_active_section(pieces[:len(paths)], overrides or [])
        family = family_named(_named_family(pieces))
        for piece in pieces:
            _drop_foreign_weights(piece, family)
        schema = OmegaConf.structured(Config)
        schema.model = OmegaConf.structured(family.config_cls)
        if any("student" in p and p.student is not None for p in pieces):
            schema.student = OmegaConf.structured(family_named("dense").config_cls)
        merged = schema
        for piece in pieces:
            merged = OmegaConf.merge(merged, piece)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(str(key), str(e).splitlines()[0] + _other_familys_key(str(key), family)) from None
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
    names, sizes = (("tp x pp", f"{par.tp} x {par.pp}") if par.cp == 1
                    else ("tp x cp x pp", f"{par.tp} x {par.cp} x {par.pp}"))
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


TRAIN_ALIASES = ("mtp_weight", "balance_alpha", "bias_update_rate", "dsa_stage", "index_loss_weight")


def apply_train_aliases(cfg: Config) -> list[str]:
    """The deprecated `train.<key>` names of family training keys (TRAIN_ALIASES): when set, they are
    the active model's keys (and win over them). A family without the key ignores a number (the weight
    or rate of a loss it does not have) and refuses anything else (a training mode of a part it lacks).
    Returns the keys set this way, so that an error in their value names the train.* key written."""
    m = cfg.active_model
    family = family_of_config(m)
    applied = []
    for key in TRAIN_ALIASES:
        v = getattr(cfg.train, key)
        if v is None:
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        _need(not number or (math.isfinite(v) and v >= 0), f"train.{key}", f"must be >= 0, got {v}")
        owners = [f.name for f in families() if key in f.training_keys]
        mine = key in family.training_keys
        given = getattr(m, key) if mine else None  # a value the model section set (not its default)
        wins = (f"; train.{key}={v!r} wins over {cfg.model_section}.{key}={given!r}"
                if mine and given not in (v, getattr(type(m)(), key)) else "")
        warnings.warn(f"train.{key} is deprecated: it is a training key of the model family's section now "
                      f"(model.{key} of {', '.join(owners)}){wins}"
                      + ("" if mine or not number else f"; ignored: this model ({family.name}) has none"),
                      FutureWarning, stacklevel=3)
        if mine:
            setattr(m, key, v)
            applied.append(key)
        else:
            _need(number, f"train.{key}", f"{v!r} is a training key of {', '.join(owners)}; this model "
                                          f"({family.name}) has none")
    return applied


def validate(cfg: Config, world_size: int) -> Config:
    """Cross-field checks of model x layout. Raises ConfigError naming the key; allocates nothing."""
    par = resolve_parallel(cfg.parallel, world_size)
    _need(isinstance(cfg.seed, int) and 0 <= cfg.seed < 2 ** 64, "seed",
          f"must be >= 0 and < 2^64 (torch's generators take 64-bit seeds), got {cfg.seed}")
    aliased = apply_train_aliases(cfg)
    for section in ("model", "student"):
        m = getattr(cfg, section)
        if m is not None:
            try:
                family_of_config(m).validate_keys(m, section)
            except ConfigError as e:  # a value the deprecated train.* name set: name the key written
                key = e.key.partition(".")[2]
                if section != cfg.model_section or key not in aliased:
                    raise
                raise ConfigError(f"train.{key}", f"{e.message} (train.{key} is the deprecated name of "
                                                  f"{section}.{key})") from None
    m = cfg.active_model
    family_of_config(m).validate_layout(m, par, cfg.model_section)
    cfg.parallel = par
    return cfg


def validate_sequence_split(cfg: Config) -> None:
    """data.seq_length must split into the layout's context-/sequence-parallel pieces (the dry run
    asks this too, so it never plans a length the run refuses)."""
    par, n = cfg.parallel, cfg.data.seq_length
    _need(n % par.sequence_divisor == 0, "data.seq_length",
          f"{'context' if par.cp > 1 else 'sequence'} parallel needs seq_length {n} divisible by "
          f"{par.sequence_divisor_text()}")


def validate_training(cfg: Config, world_size: int, needs_data: bool = True, rollouts: bool = False) -> Config:
    """validate() plus the batch / schedule / data / optimizer rules of a training run.
    needs_data=False: GRPO, whose data are rl.prompts (see validate_rl).
    rollouts=True: GRPO, whose rows are its rollouts (prompt + response, padded to split over the layout
    by GRPO itself): data.seq_length and data.global_batch_size are not its shapes, so their rules
    (split over cp x tp, dp x micro batch, the interleaved schedule's microbatches) are not its rules."""
    cfg = validate(cfg, world_size)
    par, d, t, o = cfg.parallel, cfg.data, cfg.train, cfg.optim
    pp = par.pp
    need = _need

    _at_least(d, "data", 1, "seq_length", "micro_batch_size", "global_batch_size", "synthetic_docs")
    active, section = cfg.active_model, cfg.model_section
    need(rollouts or d.seq_length <= active.max_position_embeddings, "data.seq_length",
         f"{d.seq_length} exceeds {section}.max_position_embeddings={active.max_position_embeddings}; shorten "
         f"the sequences or extend the context (rope scaling and a larger max_position_embeddings)")
    if d.synthetic is not None:
        _one_of(d.synthetic, "data.synthetic", ("arithmetic", "addition", "sum3"))
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
    _at_least(t, "train", 0, "save_interval", "max_consecutive_skips")
    _at_least(t, "train", 1, "log_interval")
    if t.peak_tflops is not None:
        _positive(t, "train", "peak_tflops")
    need(bool(t.run_dir), "train.run_dir", "must name a directory")
    arch = {f.name for f in fields(active)}
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
    need(rollouts or d.global_batch_size % per_step == 0, "data.global_batch_size",
         f"{d.global_batch_size} is not a multiple of dp x micro_batch_size = {par.dp} x {d.micro_batch_size}")
    if not rollouts:
        validate_sequence_split(cfg)
    if t.schedule == "interleaved" and pp > 1 and not rollouts:
        micro = d.global_batch_size // per_step
        need(micro % pp == 0, "data.global_batch_size",
             f"the interleaved schedule needs microbatches per DP rank ({micro}) divisible by pp={pp}")
    need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    need(t.recompute in RECOMPUTE_MODES, "train.recompute",
         f"expected one of {', '.join(RECOMPUTE_MODES)}, got {t.recompute!r}")
    unknown = [x for x in t.recompute_modules if x not in recompute_units()]
    need(not unknown, "train.recompute_modules", f"unknown {unknown}; choose from {', '.join(recompute_units())}")
    need(t.fp8 in ("none", "blockwise"), "train.fp8", f"expected none or blockwise, got {t.fp8!r}")
    need(t.fp8_backend in ("auto", "emulated", "te"), "train.fp8_backend",
         f"expected auto, emulated or te, got {t.fp8_backend!r}")
    need(t.fp8_backend != "te", "train.fp8_backend",
         "the Transformer Engine backend is not built in yet; use auto or emulated")
    need(1 <= t.fp8_block <= 4096, "train.fp8_block",
         f"must be in [1, 4096] (DeepSeek-V3 uses 128), got {t.fp8_block}")
    need(not needs_data or bool(d.paths) or d.synthetic is not None, "data.paths", "no data: give data.paths or data.synthetic")
    family = family_of_config(active)
    family.training.validate(active, t, section)  # the family's own training rules
    if t.recompute == "selective" and list(t.recompute_modules) != list(recompute_units()):  # a list of one's own
        absent = [x for x in t.recompute_modules if x not in family.recompute_units]
        need(not absent, "train.recompute_modules", f"{absent} are no parts of {family.name} layers, so they would "
                                                    f"recompute nothing; its units: {', '.join(family.recompute_units)}")
    return cfg
