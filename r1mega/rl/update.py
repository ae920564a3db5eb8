"""GRPO's update phase: a scored rollout made ready for its optimizer steps (advantages, the
minibatches' rows, the old and reference log-probs before any update), one optimizer step per
minibatch on the clipped-surrogate loss, and the step's numbers reduced over ranks.

The loss's pieces are pure functions (DeepSeekMath / DeepSeek-R1, with current options):
  advantage  A_i = (r_i - mean(r_group)) / (std(r_group) + eps), shared by every token of output i;
             exactly 0 when the group's rewards are all equal; Dr.GRPO drops the std
  ratio      rho = exp(logp - logp_old)
  surrogate  min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)       clip_high > clip_low: "clip-higher"
  TIS        w = min(exp(logp_old - logp_rollout), cap), detached, multiplies the surrogate: the
             rollout came from the sampler's numerics, not the trainer's (truncated importance sampling)
  KL (k3)    exp(d) - d - 1 with d = logp_ref - logp clamped to +-20, the estimate to +-10 (verl);
             rl.unbiased_kl: times pi_theta / pi_old (DeepSeek-V3.2: unbiased under the old policy)
  OPSM       rl.opsm_delta: a sequence with A < 0 whose mean log(pi_old / pi_theta) exceeds delta
             drops out of the surrogate (DeepSeek-V3.2's off-policy sequence masking)
  entropy    rl.entropy_coef: + coef x token entropy inside the same normalisation (a bonus)
  clip_frac  tokens where min() takes the clipped branch (as verl counts it)
  loss       -(w surrogate - beta KL + coef H), normalised per sequence then over sequences (DeepSeekMath),
             over all tokens of the step (token), or by sequences x max_new_tokens (constant,
             Dr.GRPO); always by the *global* count, so DP sums of gradients are exact.

The step's numbers: values a rank accumulates are named sums (or maxima); `global_values` takes them
from the last pipeline stage (where log-probs and losses live; rollout numbers are the same on every
stage) and combines them over data-parallel ranks, in one collective per kind.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.config import Config, RLConfig, TrainConfig
from r1mega.inference.generate import Rollout
from r1mega.kernels import batch_invariant
from r1mega.kernels.fp8_backend import kernels_scope
from r1mega.models.spec import TrainingHooks
from r1mega.models.stage import IGNORE_INDEX
from r1mega.parallel.grad_sync import sync_grads
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import Microbatch, forward_backward
from r1mega.rl.policy_scores import sequence_logprobs, token_scores
from r1mega.rl.reference import Reference
from r1mega.rl.rewards import equal_reward_groups
from r1mega.rl.rollout import ScoredRollout
from r1mega.rl.train_batch import TrainBatch, microbatches, update_batches
from r1mega.train.optimizer import DistributedAdamW, lr_at
from r1mega.train.setup import Run


# ---- the loss --------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards [n_groups * G] (groups contiguous) -> advantages of the same shape. scale: divide by
    the group's unbiased std (as torch.std and DeepSeekMath); false: Dr.GRPO. A group whose rewards
    are all equal gets exactly 0: its mean of equal floats may differ from them by rounding, which
    the std division would blow up."""
    r = rewards.view(-1, group_size).double()
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    equal = (r.max(dim=1, keepdim=True).values == r.min(dim=1, keepdim=True).values)
    return centred.masked_fill(equal, 0.0).float().view(-1)


# verl's clamps of the k3 estimator: the log-ratio to +-20 (exp stays finite), the estimate to +-10
K3_LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (d.exp() - d - 1).clamp(-K3_CLAMP, K3_CLAMP)


def per_sequence_sum(values: torch.Tensor, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of per-token values [b, s] over each sequence: seq [b, s] (-1: no sequence) -> [n]."""
    inside = seq >= 0
    return values.new_zeros(n).index_add(0, seq.clamp(min=0).flatten(), (values * inside).flatten())


@dataclass
class GRPOTerms:
    loss: torch.Tensor  # scalar, this rank's share of the global objective
    kl: torch.Tensor  # per token [b, s]: the KL estimate in the loss (k3, or k3 x pi/pi_old when unbiased)
    clipped: torch.Tensor  # per token bool: min() took the clipped branch (verl's clip fraction)
    ratio: torch.Tensor
    tis_capped: torch.Tensor  # per token bool: the importance weight hit the cap
    opsm_masked: torch.Tensor  # per token bool: its sequence was left out by off-policy sequence masking


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_low: float, clip_high: float, kl_coef: float, norm: str,
              global_count: float, rollout_logp: Optional[torch.Tensor] = None, tis_cap: float = 0.0,
              seq: Optional[torch.Tensor] = None, entropy: Optional[torch.Tensor] = None,
              entropy_coef: float = 0.0, unbiased_kl: bool = False, opsm_delta: Optional[float] = None) -> GRPOTerms:
    """logp/old_logp/ref_logp/mask [b, s] on completion tokens. advantages: [b] (one sequence per
    row) or per token [b, s] with seq [b, s] naming each token's sequence (-1: none), as packed rows
    hold several sequences. norm: "sequence" (a sequence's tokens averaged, DeepSeekMath), "token"
    or "constant" (tokens summed, DAPO / Dr.GRPO), divided by global_count: the number of sequences
    (sequence), tokens (token), or sequences x max_new_tokens (constant) in the whole step, over all
    DP ranks.
    rollout_logp + tis_cap > 0: truncated importance sampling. entropy [b, s] (differentiable) with
    entropy_coef: an entropy bonus. unbiased_kl: k3 weighted by pi_theta / pi_old (DeepSeek-V3.2).
    opsm_delta: a sequence with A < 0 whose mean log(pi_old / pi_theta) over its tokens exceeds it
    takes no part in the surrogate (V3.2's off-policy sequence masking; its KL term stays)."""
    b, s = logp.shape
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand(b, s)
        seq = torch.arange(b, device=logp.device)[:, None].expand(b, s)
    elif seq is None:
        raise ValueError("grpo_loss: per-token advantages need seq, each token's sequence")
    n_seq = int(seq.max()) + 1 if seq.numel() else 0
    maskf = mask.float()
    ratio = (logp - old_logp).exp()
    adv = advantages.to(logp.dtype)
    unclipped = ratio * adv
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    clipped_adv = clipped_ratio * adv
    surrogate = torch.minimum(unclipped, clipped_adv)
    capped = torch.zeros_like(mask, dtype=torch.bool)
    if rollout_logp is not None and tis_cap > 0:
        w = (old_logp - rollout_logp).exp().detach()
        capped = (w > tis_cap) & mask.bool()
        surrogate = surrogate * w.clamp(max=tis_cap)
    dropped = torch.zeros_like(mask, dtype=torch.bool)
    if opsm_delta is not None and n_seq:
        tokens = per_sequence_sum(maskf, seq, n_seq)
        drift = per_sequence_sum((old_logp - logp).detach() * maskf, seq, n_seq) / tokens.clamp(min=1)
        negative = per_sequence_sum((adv < 0).float() * maskf, seq, n_seq) > 0
        off = negative & (drift > opsm_delta)
        dropped = off[seq.clamp(min=0)] & (seq >= 0) & mask.bool()
        surrogate = surrogate.masked_fill(dropped, 0.0)
    kl = torch.zeros_like(logp)
    if kl_coef:
        kl = k3_kl(logp, ref_logp)
        if unbiased_kl:  # E_old[(pi/pi_old) k3] = KL(pi || ref): the gradient flows through the ratio too
            kl = ratio * kl
    bonus = entropy_coef * entropy if entropy is not None and entropy_coef else 0.0
    per_token = -(surrogate - kl_coef * kl + bonus) * maskf
    if norm == "sequence":
        lengths = per_sequence_sum(maskf, seq, max(n_seq, 1)).clamp(min=1)
        loss = (per_token / lengths[seq.clamp(min=0)]).sum() / global_count
    else:  # token and constant differ only in the count
        loss = per_token.sum() / global_count
    clipped = (clipped_adv < unclipped) & mask.bool()  # -A clip(r) > -A r: the clipped branch was taken
    return GRPOTerms(loss, kl, clipped, ratio, capped, dropped)


def loss_norm(rl: RLConfig) -> str:
    """grpo_loss's normalisation: rl.loss_norm, "token" under rl.token_level_loss."""
    return "token" if rl.token_level_loss else rl.loss_norm


def loss_count(rl: RLConfig, batch: TrainBatch, max_new_tokens: int) -> float:
    """This rank's share of the loss normaliser: trained sequences, tokens, or sequences x max_new_tokens."""
    norm = loss_norm(rl)
    if norm == "token":
        return float(batch.mask.sum())
    if norm == "constant":
        return float(batch.sequences * max_new_tokens)
    n = int(batch.seq.max()) + 1 if batch.seq.numel() else 0
    return float((per_sequence_sum(batch.mask.double(), batch.seq, max(n, 1)) > 0).sum())


# ---- the update phase ------------------------------------------------------------------------

def advantages(rl: RLConfig, scored: ScoredRollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [B], keep [B]: outputs that take part in the loss)."""
    G = rl.group_size
    adv = group_advantages(scored.rewards, G, scale=rl.scale_rewards)
    keep = torch.ones_like(scored.truncated)
    if rl.drop_equal_reward_groups:
        keep &= ~equal_reward_groups(scored.rewards, G).repeat_interleave(G)
    if rl.overlong_filter:
        keep &= ~scored.truncated
    return adv, keep


def use_tis(rl: RLConfig, train: TrainConfig) -> bool:
    """On by default wherever sampler and trainer compute differently: bf16, or an FP8 trainer."""
    if rl.tis is not None:
        return rl.tis
    return train.dtype == "bfloat16" or train.fp8 != "none"


def token_extras(batch: TrainBatch, adv: torch.Tensor, old: Optional[torch.Tensor], ref: Optional[torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """Per-token inputs of the loss [R, S]: advantages (each sequence's), sequence ids, sampler,
    old and reference log-probs (zeros on stages before the last, which have none)."""
    zeros = torch.zeros_like(batch.rollout_logp)
    adv_tok = torch.where(batch.seq >= 0, adv.to(batch.rollout_logp)[batch.seq.clamp(min=0)], zeros)
    return {"adv": adv_tok, "seq": batch.seq, "rollout": batch.rollout_logp, "old": zeros if old is None else old,
            "ref": zeros if old is None else (old if ref is None else ref)}


def policy_gradients(cfg: Config, ps: ParallelState, chunks, batch: TrainBatch, extra: dict, count: float,
                     microbatch_count: Optional[int], hooks: TrainingHooks, kernels=None) -> dict[str, torch.Tensor]:
    """Forward and backward of the GRPO loss over one minibatch (gradients accumulate in .grad, then
    are reduced over TP/SP/CP as every layout needs); returns this rank's local sums of the metrics.
    count: the step's global loss normaliser; hooks: the model family's training hooks (its extra
    losses learn the rollouts when rl.mtp_weight > 0)."""
    rl = cfg.rl
    norm = loss_norm(rl)
    mbs = microbatches(batch, cfg.data.micro_batch_size, extra, rl.routing_replay, microbatch_count)
    tis_cap = rl.tis_cap if use_tis(rl, cfg.train) else 0.0
    device = batch.input_ids.device
    sums = {k: torch.zeros((), dtype=torch.float64, device=device)
            for k in ("kl", "clipped", "tis_capped", "loss", "entropy", "opsm_masked")}

    def loss_fn(out, mb):
        e = mb.extra
        logp, entropy = token_scores(out, mb, ps, rl.temperature, entropy=True, entropy_grad=rl.entropy_coef > 0)
        terms = grpo_loss(logp, e["old"], e["ref"], e["adv"], e["mask"], rl.clip_low, rl.clip_high, rl.kl_coef,
                          norm, count, rollout_logp=e["rollout"], tis_cap=tis_cap, seq=e["seq"],
                          entropy=entropy, entropy_coef=rl.entropy_coef, unbiased_kl=rl.unbiased_kl,
                          opsm_delta=rl.opsm_delta)
        m = e["mask"]
        sums["kl"] += (terms.kl.detach() * m).sum()
        sums["clipped"] += terms.clipped.sum()
        sums["tis_capped"] += terms.tis_capped.sum()
        sums["opsm_masked"] += terms.opsm_masked.sum()
        sums["entropy"] += (entropy.detach() * m).sum()
        sums["loss"] += terms.loss.detach()
        return terms.loss

    if rl.mtp_weight > 0:  # the family's extra losses (the speculative draft) learn the policy's own rollouts
        weights = hooks.rollout_weights(rl.mtp_weight)
        extra_count = extra_loss_labels(mbs, hooks.label_context(cfg.active_model))
        extra_count = max(global_values({"n": extra_count}, ps, device)["n"], 1.0)
        sums.update({name: torch.zeros((), dtype=torch.float64, device=device) for name in hooks.extra_losses})
        policy_loss = loss_fn

        def loss_fn(out, mb):
            loss = policy_loss(out, mb)
            added, terms = hooks.extra_loss(out, extra_count, weights)
            for name, term in terms.items():
                sums[name] += term.detach()
            return loss if added is None else loss + added

    with kernels_scope(kernels):
        forward_backward(list(chunks), mbs, ps, loss_fn, schedule=cfg.train.schedule)
    sync_grads(chunks, ps, data_parallel=False)
    return sums


def extra_loss_labels(mbs: list[Microbatch], context: int) -> float:
    """Give each microbatch the labels the family's extra losses read: the sampled tokens of the loss
    whose `context` tokens before stay inside the same sequence (packed rows hold several; position
    ids restart at 0 in each). Returns this rank's count of such tokens."""
    n = 0.0
    for mb in mbs:
        e = mb.extra
        inside = mb.position_ids >= context
        mb.labels = torch.where(e["mask"].bool() & inside, e["targets"], torch.full_like(e["targets"], IGNORE_INDEX))
        n += float((mb.labels != IGNORE_INDEX).sum())
    return n


def minibatch_update(run: Run, chunks, optimizer: DistributedAdamW, batch: TrainBatch, extra: dict, step: int,
                     max_new_tokens: int, kernels=None, microbatch_count: Optional[int] = None) -> dict[str, float]:
    """One optimizer step on one minibatch; returns its local sums (kl, clipped, loss, ...).
    kernels: the FP8 backend (train.fp8) the forward/backward runs on, None for train.dtype."""
    batch_invariant.hold_threads("update")
    cfg, ps = run.cfg, run.ps
    count = max(global_values({"n": loss_count(cfg.rl, batch, max_new_tokens)}, ps, run.device)["n"], 1.0)
    sums = policy_gradients(cfg, ps, chunks, batch, extra, count, microbatch_count, run.family.training, kernels)
    # a non-finite loss makes a non-finite gradient norm (reduced over every rank): the
    # optimizer then leaves the weights as they are and counts the skip
    lr = lr_at(step, cfg.train.steps, cfg.optim)
    grad_norm, skipped = optimizer.step(lr)
    optimizer.zero_grad(chunks)
    out = {k: float(v) for k, v in sums.items()}
    return {**out, "tokens": float(batch.mask.sum()), "grad_norm": grad_norm, "skipped": float(skipped), "lr": lr}


def old_and_reference_logprobs(cfg: Config, ps: ParallelState, chunks, reference: Optional[Reference],
                               batch: TrainBatch, kernels=None, microbatch_count: Optional[int] = None,
                               vocab: Optional[int] = None
                               ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The trainer's log-probs of the sampled tokens before any update (kept for every minibatch,
    replaying the rollout's experts if asked; on `kernels`, the update's FP8 backend, so the first
    update's ratio is exactly 1) and the reference's, routed by the reference itself, in train.dtype.
    Both [B, S] on the last pipeline stage, None elsewhere (ref None without a KL term: reference None
    or a NoReference).
    rl.keep_sampling_mask: the old pass recomputes the sampler's top-p/top-k support (vocab: the
    tokenizer's) and keeps it in batch.support for the reference and the updates; the sampler's
    log-probs are moved into its truncated distribution (batch.rollout_logp)."""
    batch_invariant.hold_threads("old log-probs")
    size, rl = cfg.data.micro_batch_size, cfg.rl
    mbs = microbatches(batch, size, {}, rl.routing_replay, microbatch_count)
    if rl.keep_sampling_mask:
        for mb in mbs:
            mb.extra["support_rule"] = (rl.top_p, rl.top_k, vocab)
    with kernels_scope(kernels):
        old = sequence_logprobs(chunks, ps, mbs, rl.temperature)
    if rl.keep_sampling_mask and old is not None:
        batch.support = [mb.extra["support"] for mb in mbs]
        # old + (rollout - full), not rollout + (old - full): a sampler log-prob equal to the full
        # one lands exactly on the old log-prob (rl.exact_rollouts), where a + (b - a) may miss b
        full = torch.cat([mb.extra["full_logp"] for mb in mbs])
        batch.rollout_logp = torch.where(batch.generated, old + (batch.rollout_logp - full), batch.rollout_logp)
    ref = None
    if reference is not None and reference.model is not None:
        ref = sequence_logprobs(reference.model, ps, microbatches(batch, size, {}, False, microbatch_count),
                                rl.temperature)
    return old, ref


@dataclass
class UpdateInputs:
    """A rollout made ready for its optimizer steps: this rank's minibatches with their per-token
    loss inputs, and the rollout's metrics reduced over the ranks."""
    batches: list[TrainBatch]
    microbatch_counts: list[Optional[int]]
    extras: list[dict[str, torch.Tensor]]
    rollout_vals: dict[str, float]
    gap_max: float


def update_inputs(run: Run, chunks, reference: Reference, kernels, vocab: int, scored: ScoredRollout) -> UpdateInputs:
    """Advantages, the minibatches' rows, the old and reference log-probs of every minibatch
    (before any update; `kernels`: the update's FP8 backend; `vocab`: the tokenizer's), and the
    rollout's metrics."""
    cfg, ps = run.cfg, run.ps
    adv, keep = advantages(cfg.rl, scored)
    batches, counts = update_batches(cfg, ps, scored.rollout, keep)
    logprobs = [old_and_reference_logprobs(cfg, ps, chunks, reference, b, kernels, m, vocab)
                for b, m in zip(batches, counts)]
    rollout_sums = {**rollout_stats(cfg.rl, scored, batches, [o for o, _ in logprobs]),
                    **rollout_work(scored.rollout, ps, run.device)}
    gap_max = global_values({"gap_max": rollout_sums.pop("gap_max_local")}, ps, run.device,
                            torch.distributed.ReduceOp.MAX)["gap_max"]
    rollout_vals = global_values(rollout_sums, ps, run.device)
    extras = [token_extras(b, adv, old, ref) for b, (old, ref) in zip(batches, logprobs)]
    return UpdateInputs(batches, counts, extras, rollout_vals, gap_max)


# ---- the step's numbers, reduced over ranks ----------------------------------------------------

def global_values(values: dict[str, float], ps: ParallelState, device, op=dist.ReduceOp.SUM) -> dict[str, float]:
    """{name: local value} -> {name: value combined over DP (sum or max), as the last stage has it}."""
    if not values:
        return {}
    names = sorted(values)
    t = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    if ps.pp > 1:
        dist.broadcast(t, src=ps.members["pp"][-1], group=ps.g("pp"))
    if ps.g("dp") is not None:
        dist.all_reduce(t, op=op, group=ps.g("dp"))
    return dict(zip(names, t.tolist()))


@dataclass
class StepMetrics:
    """One optimizer step. Rollout numbers repeat over the minibatch steps of one rollout."""

    reward: float  # mean total reward of the rollout's outputs
    rewards: dict[str, float]  # mean of each reward function
    train_accuracy: float  # share of outputs with a positive reward
    zero_advantage_frac: float  # share of outputs in groups whose rewards were all equal
    response_len: float  # mean generated tokens per output
    truncated_frac: float  # share of outputs cut at max_new_tokens
    max_new_tokens: int
    logprob_gap_max: float  # |trainer - sampler| log-prob of the sampled tokens, max over tokens
    logprob_gap_mean: float
    sampler_kl: float  # k3 estimate of KL(sampler || trainer) per token
    kl: float  # k3 KL to the reference per token (this minibatch)
    clip_frac: float  # share of tokens where min() took the clipped branch (verl's count)
    tis_capped_frac: float  # share of tokens whose importance weight hit rl.tis_cap
    loss: float
    grad_norm: float
    lr: float
    skipped: bool  # the optimizer skipped this step (non-finite loss or gradient)
    skipped_steps: int
    rollout_kv_cache_bytes: int
    step_seconds: float
    entropy: float = 0.0  # mean entropy of the policy's softmax(logits / T) per trained token
    opsm_masked_frac: float = 0.0  # share of trained tokens left out by off-policy sequence masking
    update_padding_frac: float = 0.0  # share of the update's token slots that hold no sequence token
    # the rollout engine's work, summed over ranks: tokens fed to prompt prefills (one per prompt
    # group) and of those to re-admitted preempted rows, rows requeued for the cache budget, and
    # rows fed to decoding forwards summed over steps (finished rows cost nothing)
    rollout_prefill_tokens: float = 0.0
    rollout_recomputed_tokens: float = 0.0
    rollout_preemptions: float = 0.0
    rollout_decode_row_steps: float = 0.0
    heldout_accuracy: Optional[float] = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        rewards = d.pop("rewards")
        d.update({f"reward_{k}": v for k, v in rewards.items()})
        if d["heldout_accuracy"] is None:
            d.pop("heldout_accuracy")
        return {**d, **self.extra}


LOCAL_VALUES = ("grad_norm", "skipped", "lr")  # of a minibatch update's numbers: the same on every rank


def step_metrics(reward_names: list[str], r: dict, gap_max: float, upd: dict, local: dict, skipped_steps: int,
                 max_new_tokens: int, cache_bytes: float, seconds: float, extra_losses=()) -> StepMetrics:
    """One step's metrics from the rollout's sums `r` (reduced over ranks), the update's `upd`
    (reduced; with the model family's extra losses when they trained) and `local` (LOCAL_VALUES:
    grad_norm, skipped, the learning rate used)."""
    n, tokens = max(r["n"], 1.0), max(r["gap_tokens"], 1.0)
    trained = max(upd["tokens"], 1.0)
    return StepMetrics(
        reward=r["reward"] / n, rewards={k: r[f"r/{k}"] / n for k in reward_names},
        train_accuracy=r["positive"] / n, zero_advantage_frac=r["zero_adv"] / n,
        response_len=r["response_tokens"] / n, truncated_frac=r["truncated"] / n,
        max_new_tokens=max_new_tokens, logprob_gap_max=gap_max, logprob_gap_mean=r["gap_sum"] / tokens,
        sampler_kl=r["sampler_kl"] / tokens, kl=upd["kl"] / trained, clip_frac=upd["clipped"] / trained,
        tis_capped_frac=upd["tis_capped"] / trained, loss=upd["loss"], grad_norm=local["grad_norm"],
        lr=local["lr"], skipped=bool(local["skipped"]), skipped_steps=skipped_steps,
        rollout_kv_cache_bytes=cache_bytes, step_seconds=seconds, entropy=upd["entropy"] / trained,
        opsm_masked_frac=upd["opsm_masked"] / trained,
        update_padding_frac=1.0 - r["update_real_tokens"] / max(r["update_slots"], 1.0),
        rollout_prefill_tokens=r["prefill_tokens"], rollout_recomputed_tokens=r["recomputed_tokens"],
        rollout_preemptions=r["preemptions"], rollout_decode_row_steps=r["decode_row_steps"],
        extra={**({"draft_acceptance": r["draft_accepted"] / r["draft_tokens"]} if r["draft_tokens"] else {}),
               **{name: upd[name] for name in extra_losses if name in upd}})


def rollout_stats(rl: RLConfig, scored: ScoredRollout, batches: list[TrainBatch],
                  olds: list[Optional[torch.Tensor]]) -> dict[str, float]:
    """Local sums over this rank's outputs (the gap ones only on the last stage, which has `old`).
    The gap is measured on the tokens the update scores (packed rows leave out unkept sequences)."""
    G = rl.group_size
    out = {"n": float(len(scored.responses)), "reward": float(scored.rewards.sum()),
           "positive": float((scored.rewards > 0).sum()),
           "zero_adv": float(equal_reward_groups(scored.rewards, G).sum() * G),
           "response_tokens": float(scored.rollout.completion_mask.sum()),
           "truncated": float(scored.truncated.sum()), "gap_sum": 0.0, "gap_tokens": 0.0, "sampler_kl": 0.0,
           "gap_max_local": 0.0,
           # the update's token slots against the real tokens they hold (padding = slots - real)
           "update_slots": float(sum(b.slots for b in batches)),
           "update_real_tokens": float(sum(int((b.seq >= 0).sum()) for b in batches))}
    for name in rl.rewards:
        out[f"r/{name}"] = sum(t[name] for t in scored.terms)
    for b, old in zip(batches, olds):
        if old is None:
            continue
        d = (old - b.rollout_logp)[b.generated].double()
        if d.numel():
            out["gap_sum"] += float(d.abs().sum())
            out["gap_tokens"] += float(d.numel())
            out["gap_max_local"] = max(out["gap_max_local"], float(d.abs().max()))
            out["sampler_kl"] += float((d.exp() - d - 1).sum())
    return out


def rollout_work(rollout, ps: ParallelState, device) -> dict[str, float]:
    """The rollout engine's work counts of this rank's rows (prompt prefills, preempted rows'
    recomputation, decoding row-steps, drafts), summed over CP ranks when the engine split the rows
    over them (the DP sum follows with the other rollout numbers)."""
    counts = torch.tensor([float(getattr(rollout, k)) for k in Rollout.WORK_COUNTS], dtype=torch.float64,
                          device=device)
    if ps.cp > 1:
        torch.distributed.all_reduce(counts, group=ps.g("cp"))
    return dict(zip(Rollout.WORK_COUNTS, counts.tolist()))
