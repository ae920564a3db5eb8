"""DAPO's dynamic sampling: a group whose rewards are all equal has zero advantage and teaches
nothing, so more prompts are drawn until the rollout holds as many informative groups as it has
slots (each rank: its share of prompts_per_step x minibatches), at most `max_draws` extra draws.

Every rank takes the same decisions: the smallest informative count over all ranks is agreed with
one all-reduce per draw (TP/PP/CP ranks of one model replica see the same rewards; DP ranks differ),
so every rank generates as often (expert parallelism needs every rank in each forward). Each rank
then keeps its first informative groups in draw order and, when the draws ran out, fills the rest
with its first uninformative ones (zero advantage), so the step keeps its shape.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
import torch.distributed as dist

from r1mega.parallel.layout import ParallelState
from r1mega.rl.loss import equal_reward_groups
from r1mega.rl.train_batch import merge_rollouts


def agreed_min(value: int, device) -> int:
    """The smallest value over every rank of the job."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def dp_sum(value: float, ps: ParallelState, device) -> float:
    """Summed over data-parallel ranks (the other ranks of a model replica hold the same value)."""
    if ps.g("dp") is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=ps.g("dp"))
    return float(t.item())


def choose_groups(informative: list[torch.Tensor], need: int) -> list[tuple[int, int]]:
    """(draw, group) pairs: the first `need` informative groups in draw order, then the first
    uninformative ones while short; returned in draw order."""
    pairs = [(d, g) for d, flags in enumerate(informative) for g in range(len(flags))]
    good = [p for p in pairs if bool(informative[p[0]][p[1]])][:need]
    fill = [p for p in pairs if not bool(informative[p[0]][p[1]])][:need - len(good)]
    return sorted(good + fill)


def merge_scored(draws: list, chosen: list[tuple[int, int]], group_size: int):
    """One ScoredRollout of the chosen groups of several draws (groups stay contiguous)."""
    G = group_size
    rows = [[] for _ in draws]
    for d, g in chosen:
        rows[d].extend(range(g * G, (g + 1) * G))
    used = [(d, torch.tensor(r, dtype=torch.long)) for d, r in enumerate(rows) if r]
    pick = lambda name: [getattr(draws[d], name)[i] for d, idx in used for i in idx.tolist()]  # noqa: E731
    rollout = merge_rollouts([(draws[d].rollout, idx.to(draws[d].rollout.tokens.device)) for d, idx in used])
    return replace(draws[0], rollout=rollout, problems=pick("problems"), rendered=pick("rendered"),
                   responses=pick("responses"), terms=pick("terms"),
                   rewards=torch.cat([draws[d].rewards[idx.to(draws[d].rewards.device)] for d, idx in used]),
                   truncated=torch.cat([draws[d].truncated[idx.to(draws[d].truncated.device)] for d, idx in used]))


def draw_until_informative(first, draw: Callable[[int], object], group_size: int, max_draws: int,
                           ps: ParallelState, device):
    """first: the rollout's ScoredRollout; draw(n): the n-th extra draw (n = 1, 2, ...). Returns the
    rollout to train on and its counts for the step metrics (global over ranks)."""
    need = len(first.responses) // group_size
    draws = [first]
    informative = [~equal_reward_groups(first.rewards, group_size)]
    while len(draws) - 1 < max_draws and agreed_min(int(sum(int(f.sum()) for f in informative)), device) < need:
        draws.append(draw(len(draws)))
        informative.append(~equal_reward_groups(draws[-1].rewards, group_size))
    chosen = choose_groups(informative, need)
    found = sum(int(f.sum()) for f in informative)
    filled = sum(1 for d, g in chosen if not bool(informative[d][g]))
    counts = {"dynamic_extra_draws": float(len(draws) - 1),
              "dynamic_informative_groups": dp_sum(float(found), ps, device),
              "dynamic_drawn_groups": dp_sum(float(sum(len(f) for f in informative)), ps, device),
              "dynamic_filled_groups": dp_sum(float(filled), ps, device)}
    scored = first if len(draws) == 1 and not filled and chosen == [(0, g) for g in range(need)] else \
        merge_scored(draws, chosen, group_size)
    return scored, counts
