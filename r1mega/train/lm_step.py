"""One language-model forward/backward over a global batch on any layout.

The global batch is split over data-parallel ranks, then into microbatches. The loss is the sum
of token losses divided by the *global* number of target tokens, so summing gradients over DP
ranks and microbatches gives exactly the one-process gradient (no per-rank mean-of-means).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from r1mega.models.deepseek_v3.model import IGNORE_INDEX, StageOutput
from r1mega.parallel.grad_sync import sync_grads
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import Microbatch, forward_backward


@dataclass
class StepResult:
    loss: float  # main LM loss, global mean over target tokens (valid on every rank)
    mtp_loss: float
    num_tokens: int
    logits: list  # last stage only: vocab-sharded [s, b, V/tp] per microbatch (forward_only)


def dp_slice(t: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    if t.shape[0] % ps.dp:
        raise ValueError(f"global batch of {t.shape[0]} sequences does not split over dp={ps.dp} ranks")
    n = t.shape[0] // ps.dp
    return t[ps.r("dp") * n:(ps.r("dp") + 1) * n]


def lm_forward_backward(model, ps: ParallelState, input_ids: torch.Tensor, labels: torch.Tensor,
                        num_microbatches: int = 1, mtp_weight: float = 0.0,
                        forward_only: bool = False) -> StepResult:
    """input_ids/labels: the *global* batch [B, s] (identical on every rank)."""
    ids, lab = dp_slice(input_ids, ps), dp_slice(labels, ps)
    if ids.shape[0] % num_microbatches:
        raise ValueError(f"{ids.shape[0]} sequences per DP rank do not split into {num_microbatches} microbatches")
    num_tokens = int((labels != IGNORE_INDEX).sum())
    denom = max(num_tokens, 1)
    mbs = [Microbatch(i, l) for i, l in zip(ids.chunk(num_microbatches), lab.chunk(num_microbatches))]
    sums = torch.zeros(2, dtype=torch.float64, device=input_ids.device)

    def loss_fn(out: StageOutput, mb: Microbatch):
        main = out.token_loss.sum() / denom
        mtp = main.new_zeros(())
        if out.mtp_token_loss:
            mtp = sum(t.sum() for t in out.mtp_token_loss) / (denom * len(out.mtp_token_loss))
        sums[0] += float(main.detach())
        sums[1] += float(mtp.detach())
        total = main + mtp_weight * mtp if out.mtp_token_loss else main
        return total, out.logits.detach() if forward_only else None

    results = forward_backward(model, mbs, ps, loss_fn, forward_only=forward_only)
    if not forward_only:
        sync_grads(model, ps)
    if ps.world > 1:  # every rank learns the loss: sum over DP, then share from the last stage
        if ps.g("dp") is not None:
            dist.all_reduce(sums, group=ps.g("dp"))
        last = ps.members.get("pp", [ps.rank])[-1]
        if ps.pp > 1:
            dist.broadcast(sums, src=last, group=ps.g("pp"))
    return StepResult(float(sums[0]), float(sums[1]), num_tokens,
                      [r[1] for r in results] if forward_only else [])
