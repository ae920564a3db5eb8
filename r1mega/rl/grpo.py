"""`r1mega grpo`: GRPO with rollouts on the very weights being trained, as DeepSeek-R1 ran it.

    for each rollout (on every rank of any TP/PP/EP/DP layout):
        problems   = the next prompts_per_step x minibatches questions (this DP rank's share)
        rollout    = G samples per question, generated in inference mode on the training shards
                     (rl.dynamic_sampling: more prompts until every group's rewards differ, DAPO)
        rewards    = rule-based rewards per output (+ DAPO overlong shaping)
        advantages = group-normalised (0 for all-equal groups; Dr.GRPO: no std)
        rows       = each minibatch's sequences packed whole into rows (rl.packed_update; or left-padded)
        old, ref   = log-probs of the sampled tokens by the trainer (kept for every minibatch) and
                     by the reference policy (its own routing); the sampler/trainer gap is logged
                     (rl.keep_sampling_mask: over the sampler's top-p/top-k support, kept from here on)
        (train.fp8: the trainer's forwards -- old log-probs and the update -- run in FP8; sampling
                     and the reference stay in train.dtype, as rollout engines serve bf16 weights)
        for each of rl.updates_per_rollout epochs, for each of the `minibatches` blocks of whole
                     groups (the data order is shuffled): one clipped-surrogate (+TIS) + KL (+entropy)
                     optimizer step on the rollout's old log-probs; the reference is refreshed every
                     rl.ref_refresh_steps steps
A step is one optimizer step; checkpoints hold the policy, optimizer, the prompt position and the
reference policy, so a restart continues where the last checkpoint was (a checkpoint taken inside a
rollout resumes with the next rollout: choose train.save_interval as a multiple of rl.minibatches x
rl.updates_per_rollout to lose nothing).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from r1mega.config import Config, RLConfig, TrainConfig, validate_rl, validate_training
from r1mega.errors import ConfigError
from r1mega.data.prepare import prompt_tokenizer
from r1mega.data.prompts import check_same_prompts, prompts_digest
from r1mega.output_dir import release
from r1mega.data.templates import Rendered
from r1mega.inference.generate import GenerationConfig, Rollout, generate
from r1mega.kernels import batch_invariant
from r1mega.kernels.fp8_backend import fp8_kernels, kernels_scope
from r1mega.models.spec import TrainingHooks
from r1mega.models.stage import IGNORE_INDEX
from r1mega.parallel.context_parallel import gather_tokens, local_tokens
from r1mega.parallel.grad_sync import sync_grads
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import Microbatch, forward_backward
from r1mega.parallel.vocab_parallel import vocab_parallel_log_probs
from r1mega.rl.dynamic_sampling import POOL_INDEX_STRIDE, draw_until_informative, pool_problems
from r1mega.rl.loss import equal_reward_groups, group_advantages, grpo_loss, loss_count
from r1mega.rl.policy_scores import pack_support, sampler_support, scores, support_with_targets, unpack_support
from r1mega.rl.train_batch import TrainBatch, update_batches
from r1mega.rl.metrics import LOCAL_VALUES, StepMetrics, global_values, step_metrics
from r1mega.rl.prompt_source import PromptSource
from r1mega.sandbox import isolation as sandbox
from r1mega.rl.reference import NoReference, Reference, ReferencePolicy
from r1mega.rl.rewards import REWARDS, judge_once, overlong_shaping, reward_terms, run_programs, total_reward
from r1mega.train.checkpoint import (find_resume_checkpoint, in_run, read_meta, resume_from, run_meta,
                                     save_checkpoint)
from r1mega.train.metrics_log import MetricsLog, append_rollouts, table_due
from r1mega.train.optimizer import DistributedAdamW, SkipGuard, lr_at
from r1mega.train.setup import (
    Run, claim_run_dir, finish_run, own_checkpoint,
    start_run,
)
from r1mega.train.model_build import build_model


# ---- the data of one rollout -----------------------------------------------------------------

@dataclass
class ScoredRollout:
    rollout: Rollout
    problems: list[dict]  # one per output (each question repeated G times, groups contiguous)
    rendered: list[Rendered]
    responses: list[str]  # what the rewards judged: the template's response prefix + the completion
    terms: list[dict[str, float]]  # each reward function's value per output
    rewards: torch.Tensor  # [B] total, after overlong shaping
    truncated: torch.Tensor  # [B] bool: cut at max_new_tokens
    max_new_tokens: int


def microbatches(b: TrainBatch, size: int, extra: dict[str, torch.Tensor], replay: bool,
                 count: Optional[int] = None) -> list[Microbatch]:
    """Split rows into `count` microbatches (default: rows / size, rounded up), as even as can be."""
    rows = b.input_ids.shape[0]
    n = min(count or -(-rows // max(size, 1)), rows)
    out = []
    for i in range(n):
        lo, hi = i * rows // n, (i + 1) * rows // n
        routing = {k: v[:, lo:hi] for k, v in b.routing.items()} if replay and b.routing else None
        out.append(Microbatch(b.input_ids[lo:hi], None, b.attn_mask[lo:hi], b.position_ids[lo:hi], routing,
                              {"targets": b.targets[lo:hi], "mask": b.mask[lo:hi],
                               **{k: v[lo:hi] for k, v in extra.items()}}))
    if b.support is not None:  # the sampler's support of each microbatch (rl.keep_sampling_mask)
        for mb, support in zip(out, b.support):
            mb.extra["support"] = support
    return out


def token_scores(out, mb: Microbatch, ps: ParallelState, temperature: float, entropy: bool = False,
                 entropy_grad: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(log softmax(logits / T) at the targets [b, s], token entropy [b, s] or None), in float32
    like the sampler's. Under context parallelism this rank scores its own tokens, then the rows are
    gathered whole over cp. Over the sampler's support when the microbatch carries one (or asks for
    it with "support_rule": the old-policy pass computes and keeps it, and the full-vocabulary log-prob
    that moves the sampler's into its truncated distribution, in mb.extra)."""
    targets = mb.extra["targets"]
    scaled = out.logits.float() / temperature  # [s_local, b, V/tp]
    tgt = local_tokens(targets, ps).t()
    keep, rule = mb.extra.get("support"), mb.extra.get("support_rule")
    if rule is not None:
        keep = support_with_targets(sampler_support(scaled.detach(), ps, *rule), tgt, ps)
        mb.extra["support"] = pack_support(keep)
    elif keep is not None:
        keep = unpack_support(keep)
    ent = None
    if keep is not None or entropy_grad or batch_invariant.enabled():  # exact: the sampler's formula
        logp, ent = scores(scaled, tgt, ps, keep, entropy)
    else:
        logp = vocab_parallel_log_probs(scaled, tgt, ps)
        if entropy:
            with torch.no_grad():
                ent = scores(scaled.detach(), tgt, ps, None, True)[1]
    if rule is not None:
        with torch.no_grad():  # exact mode: the sampler's formula, so the rollout's log-prob equals it bitwise
            full = (scores(scaled, tgt, ps)[0] if batch_invariant.enabled()
                    else vocab_parallel_log_probs(scaled, tgt, ps))
        mb.extra["full_logp"] = gather_tokens(full.detach().t(), ps, targets.shape[1])
    return (gather_tokens(logp.t(), ps, targets.shape[1]),
            None if ent is None else gather_tokens(ent.t(), ps, targets.shape[1]))


def token_logprobs(out, mb: Microbatch, ps: ParallelState, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at the targets [b, s] (see token_scores)."""
    return token_scores(out, mb, ps, temperature)[0]


@torch.no_grad()
def sequence_logprobs(chunks, ps: ParallelState, mbs: list[Microbatch], temperature: float) -> Optional[torch.Tensor]:
    """Log-probs of the targets under the model [B, S] (last pipeline stage; None elsewhere)."""
    res = forward_backward(list(chunks), mbs, ps,
                           lambda out, mb: (out.logits.new_zeros(()), token_logprobs(out, mb, ps, temperature)),
                           forward_only=True)
    return torch.cat([r[1] for r in res]) if res else None



# ---- the algorithm's steps -------------------------------------------------------------------

def check_responses_fit(rl, longest_prompt: int, positions: int, steps: int) -> None:
    """The longest prompt plus every response length the run's steps will allow (rl.max_new_tokens,
    and rl.max_new_tokens_schedule entries reached before `steps`) must fit the model's positions;
    the key that does not is named."""
    for key, n in response_limits(rl, steps):
        if longest_prompt + n > positions:
            raise ConfigError(key, f"{n} new tokens after the longest prompt ({longest_prompt} tokens) exceed the "
                                   f"model's {positions} positions (max_position_embeddings); at most "
                                   f"{positions - longest_prompt}")


def check_cache_budget(rl, longest_prompt: int, steps: int) -> None:
    """rl.rollout_cache_tokens must hold one row of the longest prompt at every response length the run
    reaches (the engine refuses it at the rollout otherwise, after the model is built): named at start."""
    from r1mega.inference.continuous import row_need_tokens

    if not rl.rollout_cache_tokens:
        return
    positions = 1 + (rl.draft_tokens if rl.speculative else 0)  # a speculative step writes its drafts too
    block = GenerationConfig().block_size
    for key, n in response_limits(rl, steps):
        need = row_need_tokens(longest_prompt, n, block, positions)
        if rl.rollout_cache_tokens < need:
            raise ConfigError("rl.rollout_cache_tokens",
                              f"{rl.rollout_cache_tokens} cache tokens cannot hold one row: the longest prompt "
                              f"({longest_prompt} tokens) and {n} new tokens ({key})"
                              + (f" with {rl.draft_tokens} draft positions" if rl.speculative else "")
                              + f" take {need} in blocks of {block}; set at least that, or 0 for no limit")


def response_limits(rl, steps: int) -> list[tuple[str, int]]:
    """(key, response length) of every length a run of `steps` steps reaches: rl.max_new_tokens
    unless a schedule entry replaces it from step 0, and each entry reached before `steps`."""
    limits = [(f"rl.max_new_tokens_schedule[{i}]", n) for i, (at, n) in enumerate(rl.max_new_tokens_schedule)
              if at < steps]
    if not any(at <= 0 for at, _ in rl.max_new_tokens_schedule):
        limits.insert(0, ("rl.max_new_tokens", rl.max_new_tokens))
    return limits


def max_new_tokens_at(rl: RLConfig, step: int) -> int:
    """rl.max_new_tokens, switched by rl.max_new_tokens_schedule ([[step, tokens], ...])."""
    tokens = rl.max_new_tokens
    for at, n in rl.max_new_tokens_schedule:
        if step >= at:
            tokens = n
    return tokens


def rollout_problems(rl: RLConfig, ps: ParallelState, source: PromptSource, position: int,
                     index: int) -> tuple[list[dict], list[int]]:
    """This DP rank's questions of rollout `index` and their indices within the rollout. The rollout
    holds `minibatches` consecutive blocks of prompts_per_step questions (global positions from
    `position`); each DP rank takes its slice of every block, so minibatch j is the same questions
    on any layout and this rank's questions of minibatch j are its j-th contiguous share."""
    P, M = rl.prompts_per_step, rl.minibatches
    everyone = source.take(position, P * M, index)
    share = P // ps.dp
    at = [j * P + ps.r("dp") * share + i for j in range(M) for i in range(share)]
    return [everyone[g] for g in at], at


def sample_rollout(run: Run, chunks, optimizer, source: PromptSource, problems: list[dict], where: list[int],
                   step: int, index: int) -> ScoredRollout:
    """G samples per question on the training shards, then the rewards of each output. where: the
    questions' indices in the rollout, which key the sampling noise (layout-independent samples)."""
    batch_invariant.hold_threads("rollout")  # rl.exact_rollouts: the count the run started at
    cfg, ps, tok = run.cfg, run.ps, source.tok
    G = cfg.rl.group_size
    limit = max_new_tokens_at(cfg.rl, step)
    outputs = [p for p in problems for _ in range(G)]
    rendered = [source.render(p) for p in problems]
    rendered = [r for r in rendered for _ in range(G)]
    prompt_ids = [source.encode(r) for r in rendered]
    gen = GenerationConfig(limit, cfg.rl.temperature, cfg.rl.top_p, cfg.rl.top_k, tok.eos_id, source.stop(),
                           seed=cfg.seed + index, record_routing=cfg.rl.routing_replay,
                           vocab_size=tok.vocab_size, speculative=cfg.rl.speculative, draft_tokens=cfg.rl.draft_tokens,
                           max_rows=cfg.rl.rollout_max_rows, max_cache_tokens=cfg.rl.rollout_cache_tokens,
                           eos_ids=tok.eos_ids)
    rows = torch.tensor([g * G + k for g in where for k in range(G)], dtype=torch.long)
    with optimizer.offloaded(run.device.type == "cuda"):  # the KV cache takes the GPU memory the states leave
        rollout = generate(chunks, ps, prompt_ids, gen, rows=rows)
    responses, truncated = [], []
    for ids, r in zip(rollout.completions(), rendered):
        finished = bool(ids) and ids[-1] in tok.eos_ids
        text = r.response_prefix + source.decode(ids[:-1] if finished else ids)
        responses.append(text)
        truncated.append(len(ids) >= limit and not finished and not source.is_stopped(text))

    def judge() -> list[dict[str, float]]:
        programs = run_programs(responses, outputs)  # every program of the batch at once
        return [reward_terms(cfg.rl.rewards, text, p, programs, cfg.rl.answer_fallback)
                for text, p in zip(responses, outputs)]

    terms = judge_once(ps, cfg.rl.rewards, len(responses), judge, run.device)  # one verdict per model replica
    rewards = torch.tensor([sum(t.values()) for t in terms], dtype=torch.float64, device=run.device)
    lengths = rollout.completion_mask.sum(1)
    rewards += overlong_shaping(lengths, limit, cfg.rl.overlong_buffer, cfg.rl.overlong_penalty).to(rewards)
    return ScoredRollout(rollout, outputs, rendered, responses, terms, rewards,
                         torch.tensor(truncated, dtype=torch.bool, device=run.device), limit)


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
    norm = "token" if rl.token_level_loss else rl.loss_norm
    mbs = microbatches(batch, cfg.data.micro_batch_size, extra, rl.routing_replay, microbatch_count)
    tis_cap = rl.tis_cap if use_tis(rl, cfg.train) else 0.0
    device = batch.input_ids.device
    sums = {k: torch.zeros((), dtype=torch.float64, device=device)
            for k in ("kl", "clipped", "tis_capped", "loss", "entropy", "opsm_masked")}

    def loss_fn(out, mb):
        e = mb.extra
        logp, entropy = token_scores(out, mb, ps, rl.temperature, entropy=True, entropy_grad=rl.entropy_coef > 0)
        terms = grpo_loss(logp, e["old"], e["ref"], e["adv"], e["mask"], rl.clip_low, rl.clip_high, rl.kl_coef,
                          False, count, rollout_logp=e["rollout"], tis_cap=tis_cap, norm=norm, seq=e["seq"],
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


# ---- the loop --------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_accuracy(chunks, ps: ParallelState, source: PromptSource, problems: list[dict],
                      max_new_tokens: int) -> float:
    """Greedy accuracy on held-out problems (split over DP ranks)."""
    tok = source.tok
    mine = problems[ps.r("dp")::ps.dp]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_id=tok.eos_id, eos_ids=tok.eos_ids,
                           stop=source.stop(), vocab_size=tok.vocab_size)
    prompts = [source.encode(source.render(p)) for p in mine]
    r = generate(chunks, ps, prompts, gen)
    hits = sum(total_reward(["accuracy"], source.decode(c), p) for c, p in zip(r.completions(), mine))
    device = next(chunks.parameters()).device
    both = global_values({"hits": hits, "n": float(len(mine))}, ps, device)
    return both["hits"] / both["n"]


def restore(cfg: Config, ps: ParallelState, chunks, optimizer: DistributedAdamW, reference: Reference,
            candidates: list[str], ckpt_root: str, arch: dict) -> tuple[int, int, int, Optional[str]]:
    """Load the run's own newest good checkpoint (policy, optimizer, reference, prompt position;
    the trainer's rules: verified, older ones as fallback) or start from train.load. Returns
    (step, prompt position, rollout index, the checkpoint resumed from or None)."""
    t = cfg.train
    path, meta = resume_from(candidates, chunks, optimizer, ps, arch, t.allow_arch_change,
                             t.verify_checkpoint)
    own = in_run(path, ckpt_root)
    step, position, index = 0, 0, 0
    if own:
        step, position, index = meta.get("step", 0), meta.get("prompt_position", 0), meta.get("rollout_index", 0)
    elif path is not None:  # a pretrained/SFT model: its optimizer moments do not carry over to RL
        optimizer.fresh_moments()  # its fp32 masters do (the parameters may be their bf16 copies)
    if not (own and reference.restore(ckpt_root, meta.get("reference"), step)):
        reference.refresh(chunks, step)
    return step, position, index, path if own else None


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


def grpo(cfg: Config, eval_problems: int = 128, eval_every: int = 0) -> dict:
    """eval_problems: held-out problems scored greedily before and after (the built-in sums: their whole
    fixed split); 0 scores none (accuracy_before/after None)."""
    try:
        with batch_invariant.exact_mode(cfg.rl.exact_rollouts):  # rollouts and training alike
            return _grpo(cfg, eval_problems, eval_every)
    finally:
        release(cfg.train.run_dir)  # the run directory's lock, however the run ended


@dataclass
class Policy:
    """What GRPO trains and samples with, built once at start-up."""
    run: Run
    source: PromptSource
    chunks: torch.nn.ModuleList
    optimizer: DistributedAdamW
    reference: Reference  # the KL anchor (a NoReference without a KL term)
    log: MetricsLog
    kernels: object  # the FP8 backend of the trainer's forwards (train.fp8), None for train.dtype


@dataclass
class Progress:
    """Where the run stands; a checkpoint keeps all three."""
    step: int  # optimizer steps taken
    position: int  # the next rollout's first prompt
    index: int  # the next rollout's number (keys its sampling noise)


def start(cfg: Config, ckpt_root: str) -> tuple[Policy, Progress]:
    """Everything a user can get wrong checked before any weight exists (keys, the sandbox, the
    prompts' and responses' lengths, checkpoints and their architecture), then the policy, its
    optimizer and reference, restored from the run's own checkpoint or train.load."""
    own = own_checkpoint(ckpt_root)  # this run's own checkpoint (a restart) wins over train.load
    run = start_run(cfg, "grpo", lambda c, w: validate_rl(validate_training(c, w, needs_data=False, rollouts=True), w,
                                                           own is not None, REWARDS), own)
    cfg, ps, rl, t = run.cfg, run.ps, run.cfg.rl, run.cfg.train  # train.run_dir checked before the prompts' corpus
    sandbox.allow_unsafe(rl.unsafe_code_sandbox)
    if "code" in rl.rewards or (rl.prompts and "accuracy" in rl.rewards):  # accuracy runs code problems' tests
        sandbox.require_isolation()  # refuse before any work, naming why, where it cannot be set up
    tok = prompt_tokenizer(cfg.data, cfg.active_model.vocab_size, cfg.train.load if cfg.rl.prompts else None)
    source = PromptSource(rl, cfg.data.synthetic, cfg.seed, tok)
    positions = cfg.active_model.max_position_embeddings
    longest = source.longest_prompt(positions)  # prompt files: each must fit the model
    if rl.prompts and own is not None:  # a resume reads the same prompt files
        check_same_prompts(read_meta(own), rl.prompts, own)
    check_responses_fit(rl, longest, positions, t.steps)  # before hours of rollouts run past the positions
    check_cache_budget(rl, longest, t.steps)
    # checkpoints and their architecture are checked before any weight exists
    arch = run.arch  # the model keys a checkpoint must match
    candidates = find_resume_checkpoint(ckpt_root, t.load, arch, t.allow_arch_change)
    run.hf_config = read_meta(candidates[0]).get("hf_config") if candidates else None  # travels on for the export
    claim_run_dir(run, "grpo")  # one run per directory, only one this kind of run made
    chunks = build_model(run)
    reference_model = build_model(run) if rl.kl_coef else None  # the KL anchor: a second copy of the policy
    optimizer = DistributedAdamW(chunks, ps, cfg.optim)
    reference = (ReferencePolicy(reference_model, ps, rl.ref_refresh_steps) if reference_model is not None
                 else NoReference())
    step, position, index, resumed = restore(cfg, ps, chunks, optimizer, reference, candidates, ckpt_root, arch)

    log = MetricsLog(t.run_dir, t.steps, step, run.is_logger, t.wandb_project if t.wandb else None, cfg)
    if resumed:
        log.print(f"resumed from {resumed} at step {step} (prompt position {position})")
    kernels = fp8_kernels(t, log, f" for the policy update (rollouts and the reference in {t.dtype})")
    return (Policy(run, source, chunks, optimizer, reference, log, kernels),
            Progress(step, position, index))


def rollout(policy: Policy, at: Progress) -> tuple[ScoredRollout, dict[str, float]]:
    """The scored rollout of `at`'s prompts (rl.dynamic_sampling: with more drawn until every group
    is informative) and the extra draws' metrics; moves `at.position` past the prompts used."""
    run, ps, rl, source = policy.run, policy.run.ps, policy.run.cfg.rl, policy.source
    problems, where = rollout_problems(rl, ps, source, at.position, at.index)
    first = at.position
    at.position += rl.prompts_per_step * rl.minibatches
    sample = lambda problems, where: sample_rollout(  # noqa: E731
        run, policy.chunks, policy.optimizer, source, problems, where, at.step, at.index)
    scored = sample(problems, where)
    drawn: dict[str, float] = {}
    if rl.dynamic_sampling:  # DAPO: more prompts until every group of the step is informative
        block = rl.prompts_per_step * rl.minibatches  # pools follow the rollout's prompts and rows
        draw = lambda n, offset, size, mine: sample(*pool_problems(  # noqa: E731
            source, first + block + offset, block + offset, at.index + POOL_INDEX_STRIDE * n, size, mine))
        scored, drawn = draw_until_informative(scored, where, draw, rl.group_size, rl.dynamic_sampling_max_draws,
                                               ps, run.device)
        at.position += int(drawn["dynamic_extra_prompts"])
    if run.is_logger and rl.log_rollouts:
        shown = append_rollouts(os.path.join(run.cfg.train.run_dir, "rollouts.jsonl"), at.step + 1, scored,
                                rl.log_rollouts)
        if table_due(at.step, rl.minibatches * rl.updates_per_rollout, rl.log_rollouts_every):
            policy.log.rollout_table(at.step + 1, shown)
    return scored, drawn


@dataclass
class UpdateInputs:
    """A rollout made ready for its optimizer steps: this rank's minibatches with their per-token
    loss inputs, and the rollout's metrics reduced over the ranks."""
    batches: list[TrainBatch]
    microbatch_counts: list[Optional[int]]
    extras: list[dict[str, torch.Tensor]]
    rollout_vals: dict[str, float]
    gap_max: float


def update_inputs(policy: Policy, scored: ScoredRollout) -> UpdateInputs:
    """Advantages, the minibatches' rows, the old and reference log-probs of every minibatch
    (before any update), and the rollout's metrics."""
    run, cfg, ps = policy.run, policy.run.cfg, policy.run.ps
    adv, keep = advantages(cfg.rl, scored)
    batches, counts = update_batches(cfg, ps, scored.rollout, keep)
    logprobs = [old_and_reference_logprobs(cfg, ps, policy.chunks, policy.reference, b, policy.kernels, m,
                                           policy.source.tok.vocab_size)
                for b, m in zip(batches, counts)]
    rollout_sums = {**rollout_stats(cfg.rl, scored, batches, [o for o, _ in logprobs]),
                    **rollout_work(scored.rollout, ps, run.device)}
    gap_max = global_values({"gap_max": rollout_sums.pop("gap_max_local")}, ps, run.device,
                            torch.distributed.ReduceOp.MAX)["gap_max"]
    rollout_vals = global_values(rollout_sums, ps, run.device)
    extras = [token_extras(b, adv, old, ref) for b, (old, ref) in zip(batches, logprobs)]
    return UpdateInputs(batches, counts, extras, rollout_vals, gap_max)


def save(policy: Policy, at: Progress, ckpt_root: str) -> None:
    """A checkpoint of the policy, optimizer, reference and prompt position; a resume starts with
    the next rollout."""
    run, rl = policy.run, policy.run.cfg.rl
    ref_dir = policy.reference.save(ckpt_root)
    save_checkpoint(ckpt_root, at.step, policy.chunks, policy.optimizer, run.ps,
                    run_meta(run, "grpo", prompt_position=at.position, rollout_index=at.index + 1,
                             reference=ref_dir,
                             **({"prompts_sha256": prompts_digest(rl.prompts)} if rl.prompts else {})),
                    tokenizer=policy.source.tok.path)


def _grpo(cfg: Config, eval_problems: int = 128, eval_every: int = 0) -> dict:
    ckpt_root = os.path.join(cfg.train.run_dir, "checkpoints")
    policy, at = start(cfg, ckpt_root)
    run, chunks, optimizer, reference, log = policy.run, policy.chunks, policy.optimizer, policy.reference, policy.log
    cfg, ps, rl, t = run.cfg, run.ps, run.cfg.rl, run.cfg.train
    held_out = policy.source.held_out(eval_problems) if eval_problems > 0 else None
    history: dict[str, list] = {"accuracy": [], "reward": []}
    acc0 = None
    if held_out is not None:
        acc0 = evaluate_accuracy(chunks, ps, policy.source, held_out, rl.max_new_tokens)
        history["accuracy"].append((at.step, acc0))
        log.print(f"held-out accuracy before GRPO: {acc0:.3f}")
    last: Optional[StepMetrics] = None
    guard = SkipGuard(t.max_consecutive_skips, log)  # stops after too many non-finite steps in a row
    while at.step < t.steps:
        t0 = time.perf_counter()
        scored, drawn = rollout(policy, at)
        u = update_inputs(policy, scored)
        # epochs over all minibatches (the data order is already shuffled: minibatch j is this rank's
        # j-th block of whole groups); each (epoch, minibatch) is one optimizer step
        order = [j for _ in range(rl.updates_per_rollout) for j in range(len(u.batches))]
        for j in order:
            if at.step >= t.steps:
                break
            sums = minibatch_update(run, chunks, optimizer, u.batches[j], u.extras[j], at.step, scored.max_new_tokens,
                                    policy.kernels, u.microbatch_counts[j])
            at.step += 1
            step = at.step
            if reference.due(step):
                reference.refresh(chunks, step)
            guard.after_step(step, bool(sums["skipped"]), optimizer.skipped,
                             "Check the rewards and lower optim.lr, or raise the limit")
            upd = global_values({k: v for k, v in sums.items() if k not in LOCAL_VALUES}, ps, run.device)
            last = step_metrics(rl.rewards, u.rollout_vals, u.gap_max, upd, sums, optimizer.skipped,
                                scored.max_new_tokens, scored.rollout.cache_bytes, time.perf_counter() - t0,
                                run.family.training.extra_losses)
            last.extra.update(drawn)
            history["reward"].append((step, last.reward))
            if held_out is not None and eval_every and step % eval_every == 0 and step < t.steps:
                last.heldout_accuracy = evaluate_accuracy(chunks, ps, policy.source, held_out, rl.max_new_tokens)
                history["accuracy"].append((step, last.heldout_accuracy))
            log.log(step, last.as_dict(), echo=step % t.log_interval == 0)
            if (t.save_interval and step % t.save_interval == 0) or step == t.steps:
                save(policy, at, ckpt_root)
            t0 = time.perf_counter()
        at.index += 1
    acc1 = None
    if held_out is not None:
        acc1 = evaluate_accuracy(chunks, ps, policy.source, held_out, rl.max_new_tokens)
        history["accuracy"].append((t.steps, acc1))
        log.print(f"held-out accuracy after GRPO: {acc1:.3f}")
    log.close()
    if run.is_logger:
        if acc0 is not None:
            print(f"accuracy_before={acc0:.4f} accuracy_after={acc1:.4f}", flush=True)
        if last is not None:
            print(f"final_reward={last.reward:.4f} steps={t.steps}", flush=True)
    finish_run(run)
    return {"accuracy_before": acc0, "accuracy_after": acc1, "history": history,
            "final": last.as_dict() if last is not None else None}


def rollout_work(rollout, ps: ParallelState, device) -> dict[str, float]:
    """The rollout engine's work counts of this rank's rows (prompt prefills, preempted rows'
    recomputation, decoding row-steps, drafts), summed over CP ranks when the engine split the rows
    over them (the DP sum follows with the other rollout numbers)."""
    counts = torch.tensor([float(getattr(rollout, k)) for k in Rollout.WORK_COUNTS], dtype=torch.float64,
                          device=device)
    if ps.cp > 1:
        torch.distributed.all_reduce(counts, group=ps.g("cp"))
    return dict(zip(Rollout.WORK_COUNTS, counts.tolist()))


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
