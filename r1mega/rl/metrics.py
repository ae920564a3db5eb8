"""GRPO's per-step numbers as named fields, and their reduction over ranks.

Values a rank accumulates are named sums (or maxima); `global_values` takes them from the last
pipeline stage (where log-probs and losses live; rollout numbers are the same on every stage)
and combines them over data-parallel ranks, in one collective per kind.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.parallel.layout import ParallelState


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
