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
