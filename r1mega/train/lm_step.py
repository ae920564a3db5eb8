"""One language-model forward/backward over a global batch on any layout.

The global batch is split over data-parallel ranks, then into microbatches. The loss is the sum
of token losses divided by the *global* number of target tokens, so summing gradients over DP
ranks and microbatches gives exactly the one-process gradient (no per-rank mean-of-means).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
import torch.distributed as dist

from r1mega.models.family import family_of
from r1mega.models.stage import IGNORE_INDEX, StageOutput
from r1mega.parallel.grad_sync import sync_grads
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import Microbatch, ScheduleStats, forward_backward


@dataclass
class StepResult:
    loss: float  # main LM loss, global mean over target tokens (valid on every rank)
    extra: dict  # the family's extra loss terms (TrainingHooks.extra_losses), unweighted, same mean
    num_tokens: int
    logits: list = field(default_factory=list)  # last stage, forward_only: [s, b, V/tp] per microbatch
    # (under context parallelism this rank's tokens [s/cp, b, V/tp]; context_parallel.gather_sequence)
    schedule: ScheduleStats = field(default_factory=ScheduleStats)


def dp_slice(t: Optional[torch.Tensor], ps: ParallelState) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.shape[0] % ps.dp:
        raise ValueError(f"global batch of {t.shape[0]} sequences does not split over dp={ps.dp} ranks")
    n = t.shape[0] // ps.dp
    return t[ps.r("dp") * n:(ps.r("dp") + 1) * n]


def _chunks(t: Optional[torch.Tensor], n: int) -> list:
    return [None] * n if t is None else list(t.chunk(n))


def lm_forward_backward(model, ps: ParallelState, input_ids: torch.Tensor, labels: torch.Tensor,
                        num_microbatches: int = 1, loss_weights: Optional[Mapping[str, float]] = None,
                        forward_only: bool = False, attn_mask: Optional[torch.Tensor] = None,
                        position_ids: Optional[torch.Tensor] = None, schedule: str = "1f1b",
                        reduce_dp: bool = True) -> StepResult:
    """input_ids/labels (and the packing extras: document ids as attn_mask, position_ids): the *global*
    batch [B, s], identical on every rank (context-parallel ranks each keep their chunks).
    `model` is a stage module or a ModuleList of virtual-stage chunks. loss_weights: the weights of the
    family's extra losses (its training hooks' `loss_weights`; none given: 0). reduce_dp=False leaves the
    data-parallel gradient reduction to a ZeRO optimizer."""
    ids, lab = dp_slice(input_ids, ps), dp_slice(labels, ps)
    if ids.shape[0] % num_microbatches:
        raise ValueError(f"{ids.shape[0]} sequences per DP rank do not split into {num_microbatches} microbatches")
    num_tokens = int((labels != IGNORE_INDEX).sum())
    denom = max(num_tokens, 1)
    mbs = [Microbatch(*parts) for parts in zip(
        ids.chunk(num_microbatches), lab.chunk(num_microbatches),
        _chunks(dp_slice(attn_mask, ps), num_microbatches), _chunks(dp_slice(position_ids, ps), num_microbatches))]
    modules = model if isinstance(model, torch.nn.ModuleList) else torch.nn.ModuleList([model])
    hooks, weights = family_of(modules[0]).training, dict(loss_weights or {})  # the family's extra losses
    hooks.start_forward(modules, weights, input_ids.shape[0], training=not forward_only)
    names = hooks.extra_losses
    sums = torch.zeros(1 + len(names), dtype=torch.float64, device=input_ids.device)

    def loss_fn(out: StageOutput, mb: Microbatch):
        main = out.token_loss.sum() / denom
        added, terms = hooks.extra_loss(out, denom, weights)
        sums[0] += float(main.detach())
        for i, name in enumerate(names, 1):
            sums[i] += float(terms[name].detach())
        total = main + added if added is not None else main
        return total, out.logits.detach() if forward_only else None

    stats = ScheduleStats()
    results = forward_backward(list(modules), mbs, ps, loss_fn, forward_only=forward_only,
                               schedule=schedule, stats=stats)
    if not forward_only:
        sync_grads(modules, ps, data_parallel=reduce_dp)
    if ps.world > 1:  # every rank learns the loss: sum over DP, then share from the last stage
        if ps.g("dp_cp") is not None:  # cp ranks hold different tokens of the same sequences
            dist.all_reduce(sums, group=ps.g("dp_cp"))
        if ps.pp > 1:
            dist.broadcast(sums, src=ps.members["pp"][-1], group=ps.g("pp"))
    values = sums.tolist()
    return StepResult(values[0], dict(zip(names, values[1:])), num_tokens,
                      [r[1] for r in results] if forward_only else [], stats)
