"""DAPO's dynamic sampling: a group whose rewards are all equal has zero advantage and teaches
nothing, so more prompts are drawn until every group slot of the rollout (prompts_per_step x
minibatches, split over DP ranks) holds an informative group, at most `max_draws` extra draws.

Slot by slot: each slot keeps the first draw whose group in that slot is informative, and a slot
that none filled keeps its first draw's group (zero advantage), so the step keeps its shape. A slot's
problems are the same whatever the layout (draws split their rows over DP contiguously), so the
groups trained, and their order, do not depend on the DP size; pooling a rank's surplus groups into
another rank's slots would. Every rank takes the same decisions: "is any slot still empty" is agreed
with one all-reduce per draw (TP/PP/CP ranks of one model replica see the same rewards; DP ranks
differ), so every rank generates as often (expert parallelism needs every rank in each forward).
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


def choose_groups(informative: list[torch.Tensor], slots: int) -> list[tuple[int, int]]:
    """(draw, slot) per slot, in slot order: the first draw whose group in the slot is informative,
    else the first draw's (an uninformative filler)."""
    chosen = []
    for g in range(slots):
        d = next((d for d, flags in enumerate(informative) if bool(flags[g])), 0)
        chosen.append((d, g))
    return chosen


def merge_scored(draws: list, chosen: list[tuple[int, int]], group_size: int):
    """One ScoredRollout of the chosen groups of several draws, in the order given (groups stay
    contiguous; neighbouring groups of one draw go as one part)."""
    G = group_size
    parts: list[tuple[int, list[int]]] = []
    for d, g in chosen:
        if parts and parts[-1][0] == d:
            parts[-1][1].extend(range(g * G, (g + 1) * G))
        else:
            parts.append((d, list(range(g * G, (g + 1) * G))))
    used = [(d, torch.tensor(r, dtype=torch.long)) for d, r in parts]
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
    slots = len(first.responses) // group_size
    draws = [first]
    informative = [~equal_reward_groups(first.rewards, group_size)]
    every_slot_filled = lambda: bool(torch.stack(informative).any(0).all())  # noqa: E731  (this rank's)
    while len(draws) - 1 < max_draws and agreed_min(int(every_slot_filled()), device) == 0:
        draws.append(draw(len(draws)))
        if len(draws[-1].responses) != len(first.responses):
            raise ValueError(f"dynamic sampling: draw {len(draws) - 1} has {len(draws[-1].responses)} samples, "
                             f"the rollout's slots {len(first.responses)}")
        informative.append(~equal_reward_groups(draws[-1].rewards, group_size))
    chosen = choose_groups(informative, slots)
    found = sum(int(f.sum()) for f in informative)
    filled = sum(1 for d, g in chosen if not bool(informative[d][g]))
    counts = {"dynamic_extra_draws": float(len(draws) - 1),
              "dynamic_informative_groups": dp_sum(float(found), ps, device),
              "dynamic_drawn_groups": dp_sum(float(sum(len(f) for f in informative)), ps, device),
              "dynamic_filled_groups": dp_sum(float(filled), ps, device)}
    scored = first if all(d == 0 for d, _ in chosen) else merge_scored(draws, chosen, group_size)
    return scored, counts
