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
The rollout phase (questions, samples, rewards, DAPO's extra draws) is rl/rollout.py; the update
phase (advantages, old and reference log-probs, the loss, one optimizer step per minibatch, the step's
numbers) rl/update.py. Here: start-up, the loop, held-out accuracy and checkpoints.
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

from r1mega.config import Config, RLConfig, validate_rl, validate_training
from r1mega.data.jsonl import jsonl_digest
from r1mega.data.prompts import (PromptSource, check_same_prompts, check_same_seed, check_same_tokenizer,
                                 prompt_tokenizer)
from r1mega.output_dir import release
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.kernels import batch_invariant
from r1mega.kernels.fp8_backend import fp8_kernels
from r1mega.parallel.layout import ParallelState
from r1mega.rl.rollout import (POOL_INDEX_STRIDE, ScoredRollout, check_cache_budget, check_responses_fit,
                               draw_until_informative, pool_problems, rollout_problems,
                               sample_rollout)
from r1mega.rl.update import LOCAL_VALUES, StepMetrics, global_values, minibatch_update, step_metrics, update_inputs
from r1mega.sandbox import isolation as sandbox
from r1mega.rl.reference import NoReference, Reference, ReferencePolicy
from r1mega.rl.rewards import REWARDS, judge_batch
from r1mega.train.checkpoint import (find_resume_checkpoint, in_run, read_meta, resume_from, run_meta,
                                     save_checkpoint)
from r1mega.train.lm_step import StepResult
from r1mega.train.metrics_log import MetricsLog, append_rollouts, table_due
from r1mega.train.optimizer import DistributedAdamW, SkipGuard
from r1mega.train.setup import Run, build_model, claim_run_dir, finish_run, own_checkpoint, start_run


@torch.no_grad()
def evaluate_accuracy(chunks, ps: ParallelState, source: PromptSource, problems: list[dict], rl: RLConfig) -> float:
    """Greedy accuracy on held-out problems (split over DP ranks, rl.max_new_tokens each), judged as the
    rollout's samples are: the response with its template prefix, once per model replica, the run's
    rl.answer_fallback."""
    tok = source.tok
    mine = problems[ps.r("dp")::ps.dp]
    gen = GenerationConfig(max_new_tokens=rl.max_new_tokens, temperature=0.0, eos_id=tok.eos_id, eos_ids=tok.eos_ids,
                           stop=source.stop(), vocab_size=tok.vocab_size)
    rendered = [source.render(p) for p in mine]
    r = generate(chunks, ps, [source.encode(x) for x in rendered], gen)
    texts = [source.response_text(x, ids) for x, ids in zip(rendered, r.completions())]
    device = next(chunks.parameters()).device
    hits = sum(t["accuracy"] for t in judge_batch(ps, ["accuracy"], texts, mine, rl.answer_fallback, device))
    both = global_values({"hits": hits, "n": float(len(mine))}, ps, device)
    return both["hits"] / both["n"]


def restore(cfg: Config, ps: ParallelState, chunks, optimizer: DistributedAdamW, reference: Reference,
            candidates: list[str], ckpt_root: str, arch: dict) -> tuple[int, int, int, Optional[str]]:
    """Load the run's own newest good checkpoint (policy, optimizer, reference, prompt position;
    the trainer's rules: verified, older ones as fallback) or start from train.load. Returns
    (step, prompt position, rollout index, the checkpoint resumed from or None)."""
    t = cfg.train
    restored: list[str] = []  # the candidate whose reference copy loaded (a damaged one makes it fall back)

    def load_reference(path: str, meta: dict) -> None:
        if in_run(path, ckpt_root) and reference.restore(ckpt_root, meta.get("reference"), meta.get("step", 0),
                                                         t.verify_checkpoint):
            restored.append(path)

    path, meta = resume_from(candidates, chunks, optimizer, ps, arch, t.allow_arch_change,
                             t.verify_checkpoint, also=load_reference)
    own = in_run(path, ckpt_root)
    step, position, index = 0, 0, 0
    if own:
        step, position, index = meta.get("step", 0), meta.get("prompt_position", 0), meta.get("rollout_index", 0)
    elif path is not None:  # a pretrained/SFT model: its optimizer moments do not carry over to RL
        optimizer.fresh_moments()  # its fp32 masters do (the parameters may be their bf16 copies)
    if path is None or path not in restored:
        reference.refresh(chunks, step)
    return step, position, index, path if own else None


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
    def check_same_data(where: str) -> None:  # a resume reads the same prompts, in order, encoded alike
        if not t.allow_data_change:
            saved = read_meta(where)
            if rl.prompts:
                check_same_prompts(saved, rl.prompts, where)
            check_same_tokenizer(saved, tok, where)
            check_same_seed(saved, cfg.seed, where)

    if own is not None:  # checked before any weight exists
        check_same_data(own)
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
    reference = (ReferencePolicy(reference_model, ps, rl.ref_refresh_steps, t.load, cfg.seed)
                 if reference_model is not None
                 else NoReference())
    step, position, index, resumed = restore(cfg, ps, chunks, optimizer, reference, candidates, ckpt_root, arch)
    if resumed is not None and resumed != own:  # fell back from a damaged newest checkpoint to an older one
        check_same_data(resumed)

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


def save(policy: Policy, at: Progress, ckpt_root: str) -> None:
    """A checkpoint of the policy, optimizer, reference and prompt position; a resume starts with
    the next rollout."""
    run, rl = policy.run, policy.run.cfg.rl
    ref_dir = policy.reference.save(ckpt_root)
    save_checkpoint(ckpt_root, at.step, policy.chunks, policy.optimizer, run.ps,
                    run_meta(run, "grpo", prompt_position=at.position, rollout_index=at.index + 1,
                             reference=ref_dir, tokenizer_fingerprint=policy.source.tok.fingerprint(),
                             data_seed=run.cfg.seed,
                             **({"prompts_sha256": jsonl_digest(rl.prompts)} if rl.prompts else {})),
                    tokenizer=policy.source.tok.path)


def _grpo(cfg: Config, eval_problems: int = 128, eval_every: int = 0) -> dict:
    ckpt_root = os.path.join(cfg.train.run_dir, "checkpoints")
    policy, at = start(cfg, ckpt_root)
    run, chunks, optimizer, reference, log = policy.run, policy.chunks, policy.optimizer, policy.reference, policy.log
    cfg, ps, rl, t = run.cfg, run.ps, run.cfg.rl, run.cfg.train
    hooks, model_cfg = run.family.training, cfg.active_model
    held_out = policy.source.held_out(eval_problems) if eval_problems > 0 else None
    history: dict[str, list] = {"accuracy": [], "reward": []}
    acc0 = None
    if held_out is not None:
        acc0 = evaluate_accuracy(chunks, ps, policy.source, held_out, rl)
        history["accuracy"].append((at.step, acc0))
        log.print(f"held-out accuracy before GRPO: {acc0:.3f}")
    last: Optional[StepMetrics] = None
    guard = SkipGuard(t.max_consecutive_skips, log)  # stops after too many non-finite steps in a row
    while at.step < t.steps:
        t0 = time.perf_counter()
        scored, drawn = rollout(policy, at)
        u = update_inputs(run, chunks, reference, policy.kernels, policy.source.tok.vocab_size, scored)
        # epochs over all minibatches (the data order is already shuffled: minibatch j is this rank's
        # j-th block of whole groups); each (epoch, minibatch) is one optimizer step
        order = [j for _ in range(rl.updates_per_rollout) for j in range(len(u.batches))]
        # a checkpoint falls due within the rollout and is saved at its end: a resume starts with the
        # next rollout, so one saved mid-rollout would skip the rollout's remaining minibatches
        save_due = False
        for j in order:
            if at.step >= t.steps:
                break
            # the family's work around each optimizer step, as the trainer runs it (DeepSeek-V3's routing-bias
            # update at model.bias_update_rate): its statistics count the update's forward only, which under
            # rl.routing_replay runs the rollout's recorded routing, so the biases move by the loads the
            # sampler's routing put on the experts; a skipped step leaves them as they are
            hooks.before_step(chunks, model_cfg, u.batches[j].labels)
            sums = minibatch_update(run, chunks, optimizer, u.batches[j], u.extras[j], at.step, scored.max_new_tokens,
                                    policy.kernels, u.microbatch_counts[j])
            at.step += 1
            step = at.step
            guard.after_step(step, bool(sums["skipped"]), optimizer.skipped,
                             "Check the rewards and lower optim.lr, or raise the limit")
            upd = global_values({k: v for k, v in sums.items() if k not in LOCAL_VALUES}, ps, run.device)
            family = hooks.after_step(chunks, ps, model_cfg, bool(sums["skipped"]),
                                      StepResult(upd["loss"], {k: upd[k] for k in hooks.extra_losses if k in upd},
                                                 int(upd["tokens"])))
            if reference.due(step):  # a copy of the whole step: weights and routing biases
                reference.refresh(chunks, step)
            last = step_metrics(rl.rewards, u.rollout_vals, u.gap_max, upd, sums, optimizer.skipped,
                                scored.max_new_tokens, scored.rollout.cache_bytes, time.perf_counter() - t0,
                                hooks.extra_losses)
            last.extra.update({**family, **drawn})
            history["reward"].append((step, last.reward))
            if held_out is not None and eval_every and step % eval_every == 0 and step < t.steps:
                last.heldout_accuracy = evaluate_accuracy(chunks, ps, policy.source, held_out, rl)
                history["accuracy"].append((step, last.heldout_accuracy))
            log.log(step, last.as_dict(), echo=step % t.log_interval == 0)
            save_due = save_due or bool(t.save_interval and step % t.save_interval == 0) or step == t.steps
            t0 = time.perf_counter()
        if save_due:
            save(policy, at, ckpt_root)
        at.index += 1
    acc1 = None
    if held_out is not None:
        acc1 = evaluate_accuracy(chunks, ps, policy.source, held_out, rl)
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


