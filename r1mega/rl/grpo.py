"""`r1mega grpo`: GRPO with rollouts on the very weights being trained.

Per step, on every rank of any TP/PP/EP/DP layout:
  1. this DP rank's prompts x G samples are generated in inference mode on the training shards
     (KV cache built and freed inside `generate`), recording each token's experts if asked;
  2. rule-based rewards -> group-normalised advantages (groups never straddle DP ranks);
  3. log-probs of the sampled tokens by the training forward (the "old" policy, kept for all
     updates of this batch) and by the frozen reference; the gap to the rollout's own log-probs
     is measured and logged every step;
  4. `rl.updates_per_rollout` clipped-surrogate + k3-KL updates with the ZeRO-1 optimizer,
     optionally replaying the rollout's routing in every training forward;
  5. the reference policy is refreshed every `rl.ref_refresh_steps`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.config import Config, validate_training
from r1mega.data.prepare import resolve_data
from r1mega.data.tokenizer import Tokenizer
from r1mega.inference.generate import GenerationConfig, Rollout, generate, left_padded_causal_mask
from r1mega.parallel.grad_sync import sync_grads
from r1mega.parallel.layout import (
    ParallelState, build_parallel_state, default_device, join_ranks, single_process_state,
)
from r1mega.parallel.pipeline import Microbatch, forward_backward
from r1mega.parallel.vocab_parallel import vocab_parallel_log_probs
from r1mega.rl.loss import equal_reward_groups, group_advantages, grpo_loss
from r1mega.rl import sandbox
from r1mega.rl.rewards import code_rewards_in_parallel, total_reward
from r1mega.rl.tasks import addition_prompts, arithmetic_prompts, stops_after_answer
from r1mega.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from r1mega.train.metrics_log import MetricsLog
from r1mega.train.optimizer import DistributedAdamW, lr_at
from r1mega.train.trainer import build_chunks, init_weights, place


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, S]
    targets: torch.Tensor  # [B, S]
    mask: torch.Tensor  # [B, S] completion tokens that are trained
    position_ids: torch.Tensor
    attn_mask: torch.Tensor  # [B, 1, S, S]
    rollout_logp: torch.Tensor
    routing: Optional[dict]


def to_train_batch(r: Rollout, keep: torch.Tensor) -> TrainBatch:
    """Rollout sequences as next-token training rows (same left-padded layout as generation, so the
    recorded routing lines up token for token). keep [B]: sequences that take part in the loss."""
    ids, n = r.tokens, r.tokens.shape[1] - 1
    return TrainBatch(ids[:, :-1], ids[:, 1:], r.completion_mask[:, 1:] & keep[:, None], r.position_ids[:, :-1],
                      left_padded_causal_mask(r.pad, n), r.logprobs[:, 1:],
                      {k: v[:n] for k, v in r.routing.items()} or None)


def microbatches(b: TrainBatch, n: int, extra: dict[str, torch.Tensor], replay: bool) -> list[Microbatch]:
    out = []
    for i in range(n):
        lo, hi = i * b.input_ids.shape[0] // n, (i + 1) * b.input_ids.shape[0] // n
        routing = {k: v[:, lo:hi] for k, v in b.routing.items()} if replay and b.routing else None
        out.append(Microbatch(b.input_ids[lo:hi], None, b.attn_mask[lo:hi], b.position_ids[lo:hi], routing,
                              {"targets": b.targets[lo:hi], "mask": b.mask[lo:hi],
                               **{k: v[lo:hi] for k, v in extra.items()}}))
    return out


@torch.no_grad()
def sequence_logprobs(chunks, ps: ParallelState, mbs: list[Microbatch], temperature: float) -> Optional[torch.Tensor]:
    """Log-probs of the targets under the model [B, S] (last pipeline stage; None elsewhere)."""
    def loss_fn(out, mb):
        logp = vocab_parallel_log_probs(out.logits.float() / temperature, mb.extra["targets"].t(), ps).t()
        return logp.new_zeros(()), logp

    res = forward_backward(list(chunks), mbs, ps, loss_fn, forward_only=True)
    return torch.cat([r[1] for r in res]) if res else None


def _sum_dp(t: torch.Tensor, ps: ParallelState, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if ps.g("dp") is not None:
        dist.all_reduce(t, op=op, group=ps.g("dp"))
    return t


def _from_last_stage(t: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    if ps.pp > 1:
        dist.broadcast(t, src=ps.members["pp"][-1], group=ps.g("pp"))
    return t


@torch.no_grad()
def evaluate_accuracy(chunks, ps: ParallelState, tok: Tokenizer, problems: list[dict], max_new_tokens: int) -> float:
    """Greedy accuracy on held-out problems (split over DP ranks)."""
    mine = problems[ps.r("dp")::ps.dp]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_id=tok.eos_id,
                           stop=lambda ids: stops_after_answer(tok.decode(ids)), vocab_size=tok.vocab_size)
    r = generate(chunks, ps, [tok.encode(p["prompt"]) for p in mine], gen)
    hits = sum(total_reward(["accuracy"], tok.decode(c), p) for c, p in zip(r.completions(), mine))
    device = next(chunks.parameters()).device
    both = _sum_dp(torch.tensor([hits, float(len(mine))], dtype=torch.float64, device=device), ps)
    return float(both[0] / both[1])


def copy_weights(src: torch.nn.ModuleList, dst: torch.nn.ModuleList) -> None:
    with torch.no_grad():
        for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
            b.copy_(a)


def grpo(cfg: Config, eval_problems: int = 128, eval_every: int = 0) -> dict:
    distributed, owns_group, world = join_ranks()
    cfg = validate_training(cfg, world)
    rl, t = cfg.rl, cfg.train
    sandbox.allow_unsafe(rl.unsafe_code_sandbox)
    if "code" in rl.rewards:
        sandbox.require_isolation()  # refuse before any work, naming why, where it cannot be set up
    if t.virtual_stages != 1:
        raise ValueError("train.virtual_stages: GRPO generates on one model chunk per pipeline rank")
    ps = build_parallel_state(cfg.parallel) if distributed else single_process_state()
    torch.manual_seed(cfg.seed)
    if rl.prompts_per_step % ps.dp:
        raise ValueError(f"rl.prompts_per_step {rl.prompts_per_step} does not split over dp={ps.dp}")
    d = resolve_data(cfg.data, "pretrain", cfg.model.vocab_size)
    tok = Tokenizer(d.tokenizer)

    device = default_device()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, cfg.seed)
    place(chunks, device, getattr(torch, t.dtype))
    optimizer = DistributedAdamW(chunks, ps, cfg.optim)
    ckpt_root = os.path.join(t.run_dir, "checkpoints")
    start = 0
    own = latest_checkpoint(ckpt_root)  # this run's own checkpoint (a restart) wins over train.load
    resume = own or t.load
    if resume:
        meta = load_checkpoint(resume, chunks, optimizer, ps)
        start = meta.get("step", 0) if own else 0
        if not own:  # a pretrained/SFT model: its optimizer moments do not carry over to RL
            optimizer.reset_from_params()
    reference = None
    if rl.kl_coef:
        reference = place(build_chunks(cfg, ps), device, getattr(torch, t.dtype))
        copy_weights(chunks, reference)
        reference.eval()

    addition = cfg.data.synthetic == "addition"
    held_out = addition_prompts(0, 0, heldout=True) if addition else arithmetic_prompts(eval_problems, seed=10_007)
    log = MetricsLog(t.run_dir, t.steps, start, ps.rank == 0, t.wandb_project if t.wandb else None, cfg)
    history = {"accuracy": [], "reward": []}
    acc0 = evaluate_accuracy(chunks, ps, tok, held_out, rl.max_new_tokens)
    history["accuracy"].append((start, acc0))
    log.print(f"held-out accuracy before GRPO: {acc0:.3f}")
    G, P_local = rl.group_size, rl.prompts_per_step // ps.dp
    micro = max(1, (P_local * G) // max(cfg.data.micro_batch_size, 1))
    for step in range(start, t.steps):
        t0 = time.perf_counter()
        problems = (addition_prompts(rl.prompts_per_step, cfg.seed * 100_003 + step, heldout=False) if addition
                    else arithmetic_prompts(rl.prompts_per_step, seed=cfg.seed * 100_003 + step))
        mine = problems[ps.r("dp") * P_local:(ps.r("dp") + 1) * P_local]
        samples = [p for p in mine for _ in range(G)]
        gen = GenerationConfig(rl.max_new_tokens, rl.temperature, rl.top_p, rl.top_k, tok.eos_id,
                               lambda ids: stops_after_answer(tok.decode(ids)), seed=cfg.seed + step,
                               record_routing=rl.routing_replay, vocab_size=tok.vocab_size)
        if device.type == "cuda":  # make room for the KV cache: optimizer states wait in host memory
            optimizer.offload()
        rollout = generate(chunks, ps, [tok.encode(s["prompt"]) for s in samples], gen,
                           row_offset=ps.r("dp") * len(samples))
        optimizer.reload()
        texts = [tok.decode(c) for c in rollout.completions()]
        with code_rewards_in_parallel(texts, samples):
            rewards = torch.tensor([total_reward(rl.rewards, x, s) for x, s in zip(texts, samples)], device=device)
        adv = group_advantages(rewards, G)
        keep = torch.ones(len(samples), dtype=torch.bool, device=device)
        if rl.drop_equal_reward_groups:
            keep = ~equal_reward_groups(rewards, G).repeat_interleave(G)
        batch = to_train_batch(rollout, keep)
        n_micro = micro if batch.input_ids.shape[0] % micro == 0 else 1
        count = batch.mask.sum() if rl.token_level_loss else (batch.mask.any(1)).sum()
        count = float(_sum_dp(count.double().reshape(1), ps)[0])
        base = microbatches(batch, n_micro, {"adv": adv}, rl.routing_replay)
        old = sequence_logprobs(chunks, ps, base, rl.temperature)
        ref = sequence_logprobs(reference, ps, base, rl.temperature) if reference is not None else old
        stats = torch.zeros(6, dtype=torch.float64, device=device)  # gap max, gap sum, tokens, kl, clipped, loss
        if old is not None:
            gap = (old - batch.rollout_logp).abs()[batch.mask]
            stats[0] = gap.max() if gap.numel() else 0.0
            stats[1], stats[2] = gap.sum(), batch.mask.sum()
        extra = {"adv": adv, "old": old if old is not None else adv, "ref": ref if ref is not None else adv}
        mbs = microbatches(batch, n_micro, extra, rl.routing_replay)

        def loss_fn(out, mb):
            logp = vocab_parallel_log_probs(out.logits.float() / rl.temperature, mb.extra["targets"].t(), ps).t()
            terms = grpo_loss(logp, mb.extra["old"], mb.extra["ref"], mb.extra["adv"], mb.extra["mask"],
                              rl.clip_low, rl.clip_high, rl.kl_coef, rl.token_level_loss, max(count, 1.0))
            m = mb.extra["mask"]
            stats[3] += float((terms.kl * m).sum())
            stats[4] += float(terms.clipped.sum())
            stats[5] += float(terms.loss.detach())
            return terms.loss

        lr = lr_at(step, t.steps, cfg.optim)
        grad_norm = float("nan")
        for _ in range(rl.updates_per_rollout):
            forward_backward(list(chunks), mbs, ps, loss_fn)
            sync_grads(chunks, ps, data_parallel=False)
            grad_norm, _ = optimizer.step(lr)
            optimizer.zero_grad(chunks)
        if reference is not None and rl.ref_refresh_steps and (step + 1) % rl.ref_refresh_steps == 0:
            copy_weights(chunks, reference)
        stats = _from_last_stage(stats, ps)
        gap_max = float(_sum_dp(stats[0:1].clone(), ps, dist.ReduceOp.MAX)[0])
        sums = _sum_dp(torch.cat([stats[1:], rewards.sum().double().reshape(1), torch.tensor([float(len(samples))],
                                  dtype=torch.float64, device=device), (rewards > 0).sum().double().reshape(1),
                                  rollout.completion_mask.sum().double().reshape(1)]), ps)
        tokens, n_seq = max(float(sums[1]), 1.0), float(sums[6])
        metrics = {"reward": float(sums[5]) / n_seq, "train_accuracy": float(sums[7]) / n_seq,
                   "logprob_gap_max": gap_max, "logprob_gap_mean": float(sums[0]) / tokens,
                   "kl": float(sums[2]) / tokens, "clip_frac": float(sums[3]) / tokens / rl.updates_per_rollout,
                   "loss": float(sums[4]) / rl.updates_per_rollout, "grad_norm": grad_norm, "lr": lr,
                   "response_len": float(sums[8]) / n_seq, "rollout_kv_cache_bytes": rollout.cache_bytes,
                   "step_seconds": time.perf_counter() - t0}
        history["reward"].append((step + 1, metrics["reward"]))
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < t.steps:
            metrics["heldout_accuracy"] = evaluate_accuracy(chunks, ps, tok, held_out, rl.max_new_tokens)
            history["accuracy"].append((step + 1, metrics["heldout_accuracy"]))
        log.log(step + 1, metrics, echo=(step + 1) % t.log_interval == 0)
        if t.save_interval and (step + 1) % t.save_interval == 0:
            save_checkpoint(ckpt_root, step + 1, chunks, optimizer, ps, {"kind": "grpo"})
    acc1 = evaluate_accuracy(chunks, ps, tok, held_out, rl.max_new_tokens)
    history["accuracy"].append((t.steps, acc1))
    log.print(f"held-out accuracy after GRPO: {acc1:.3f}")
    log.close()
    if ps.rank == 0:
        print(f"accuracy_before={acc0:.4f} accuracy_after={acc1:.4f}", flush=True)
    if distributed and owns_group:
        dist.destroy_process_group()
    return {"accuracy_before": acc0, "accuracy_after": acc1, "history": history}
