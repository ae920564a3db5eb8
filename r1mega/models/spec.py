"""The model-family protocol: what one architecture supplies to the engine (`r1mega.models.family`
keeps the registry). Each family builds one `ModelFamily` in its `spec.py`."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional


class TrainingHooks:
    """What a family adds to training, driven by its `model:` section's training keys (the family's
    `training_keys`): its rules on the `train:` keys, extra loss terms, the work before and after the
    optimizer step, and the metrics they produce. Generic code (train/lm_step.py, train/trainer.py,
    rl/update.py) calls these and never names a family's losses. The base class adds nothing."""

    # names of the extra loss terms a step reports (StepResult.extra), each a global mean per target token
    extra_losses: tuple[str, ...] = ()

    def validate(self, model_cfg, train, section: str) -> None:
        """The family's rules on the run's `train:` keys (raise ConfigError naming the key)."""

    def prepare(self, chunks, model_cfg) -> None:
        """Before the optimizer is built: e.g. freeze what a training stage keeps fixed."""

    def before_step(self, chunks, model_cfg, labels) -> None:
        """Before a step's forward, with the global batch's labels [B, s] (GRPO: this rank's minibatch's
        trained tokens, IGNORE_INDEX elsewhere; a stage that needs the global count is refused in RL,
        rl_refusal). Forwards outside a step (GRPO's old log-probs) run before it: it starts the step's
        statistics afresh."""

    def loss_weights(self, model_cfg) -> dict[str, float]:
        """The weights of the family's extra losses, from its training keys; passed as they are to
        `lm_forward_backward`, which hands them back to start_forward and extra_loss (missing: 0)."""
        return {}

    def rollout_weights(self, weight: float) -> dict[str, float]:
        """The weights of the extra losses when they learn from RL rollouts with weight `weight`
        (rl.mtp_weight: a speculative draft kept on-policy); no balance loss there."""
        return {}

    def rl_refusal(self, model_cfg) -> "Optional[tuple[str, str]]":
        """(key, why) when a training key is set to something GRPO does not run (None: nothing)."""
        return None

    def label_context(self, model_cfg) -> int:
        """How many tokens before a label the extra losses read, all inside the label's sequence."""
        return 0

    def start_forward(self, chunks, weights: dict, global_sequences: int, training: bool) -> None:
        """Before a global batch's forward: e.g. scale a loss the layers add themselves (0 when not training)."""

    def extra_loss(self, out, denom: int, weights: dict) -> "tuple[Optional[Any], dict[str, Any]]":
        """A microbatch's extra terms from its StageOutput, per target token (denom: the global count):
        (the weighted sum to add to its loss, or None; {each of extra_losses: the unweighted term})."""
        return None, {}

    def after_step(self, chunks, ps, model_cfg, skipped: bool, result) -> dict[str, float]:
        """Collective. Runs after every optimizer step, the trainer's and GRPO's alike; skipped: the step
        left the main model's weights as they were (non-finite, or frozen). result: the step's
        StepResult (train/lm_step.py); GRPO gives its loss, its trained tokens and, in `extra`, the
        extra losses only when rl.mtp_weight trains them. Returns the family's metrics."""
        return {}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    hf_model_types: tuple[str, ...]  # config.json `model_type`s this family reads
    config_cls: type  # the `model:` section (a dataclass with from_hf / to_hf)
    validate_keys: Callable[..., None]  # (cfg, section) -> None, raises ConfigError
    validate_layout: Callable[..., None]  # (cfg, resolved ParallelConfig, section) -> None
    stage_cls: Callable[..., Any]  # (cfg, ps, pp_layers=None, stage=None, num_stages=None) -> nn.Module
    gather_full: Callable[..., dict]  # (stage, grads=False) -> {checkpoint key: full tensor}
    count_params: Callable[[Any], dict]  # -> {"total", "active", "mtp", ...}
    flops_per_token: Callable[[Any, int], float]
    kv_cache: str  # what generation caches per token and layer
    routed_experts: Callable[[Any], int] = lambda cfg: 0  # a config's routed experts per MoE layer (0: dense)
    training_keys: tuple[str, ...] = ()  # config keys that are training rules, not architecture
    # the parts of its layers selective recompute can run again (`train.recompute_modules` names them)
    recompute_units: tuple[str, ...] = ()
    fp32_params: tuple[str, ...] = ()  # parameter names kept in float32 whatever the weight dtype
    # HF checkpoint tensors a model need not hold (e.g. MTP copies of the embedding), by name
    hf_optional: Callable[[str, dict], bool] = lambda key, hf_config: False
    # (config.json, the checkpoint's tensor names) -> prefixes of expected tensors the checkpoint may
    # lack as a whole (e.g. an MTP layer transformers saves without): the model keeps their init
    hf_may_lack: Callable[[dict, Any], tuple[str, ...]] = lambda hf_config, present: ()
    # config.json -> {name: source}: tensors the family's HF format repeats under another name (e.g.
    # DeepSeek's MTP copies of the embedding and head), written from their source on export
    hf_copies: Callable[[dict], dict[str, str]] = lambda hf_config: {}
    # the 2-D weights a family's FP8 checkpoints store in e4m3 with block scales, by name
    hf_fp8: Callable[[str], bool] = lambda key: key.endswith("proj.weight")
    # why a config cannot run rl.exact_rollouts (None: it can): whether the family's layers have
    # batch-invariant kernels (kernels/batch_invariant.py) for it
    exact_rollouts_refusal: Callable[[Any], Optional[str]] = (
        lambda cfg: f"the {getattr(cfg, 'family', type(cfg).__name__)} family has no batch-invariant kernels")
    # why a config cannot draft its own tokens for speculative decoding (None: it can): the MTP draft
    # needs the family's MTP layers
    draft_refusal: Callable[[Any], Optional[str]] = (
        lambda cfg: f"the {getattr(cfg, 'family', type(cfg).__name__)} family has no MTP module")
    training: TrainingHooks = TrainingHooks()
    # () -> the family's share of `r1mega plan` (a module, see models/<family>/plan.py): stage_params,
    # activation_bytes, family_comm, kv_cache_bytes, optionally recompute_transient_bytes; imported when first asked for
    plan_module: Callable[[], Any] = lambda: None

    @property
    def planner(self):
        return self.plan_module()

    def config_from_hf(self, source: "str | dict"):
        return self.config_cls.from_hf(source)

    def config_to_hf(self, cfg) -> dict:
        return cfg.to_hf()

    def build_stage(self, cfg, ps, pp_layers: Optional[list[int]] = None,
                    stage: Optional[int] = None, num_stages: Optional[int] = None):
        return self.stage_cls(cfg, ps, pp_layers, stage=stage, num_stages=num_stages)

    def architecture(self, cfg) -> dict:
        """The config's keys that shape the model, its family included (training rules left out)."""
        return {k: v for k, v in asdict(cfg).items() if k not in self.training_keys}
