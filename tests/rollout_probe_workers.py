"""Spawned-rank code for tests/test_rollout_probes.py."""
from __future__ import annotations

import torch

from grpo_update_workers import fake_scored, model

# Dynamic sampling, group size 2, 4 slots (2 per rank under DP2), one extra draw allowed: the
# rollout has 2 informative groups, both in rank 0's half; the pool (6 prompts for (2 + 1) / 0.5,
# capped at one rollout's 4) has one more, drawn by rank 0, for rank 1's first slot.
DRAW_REWARDS = [[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def dynamic_sampling_choice_worker(rank: int, world: int) -> list[int]:
    """The problem ids this rank trains on (each draw's rows split contiguously over DP, as
    `rollout_problems` does with minibatches=1); problem ids are global: 100 x draw + row."""
    from r1mega.rl.rollout import draw_until_informative

    _, _, ps = model({}, world, seed=1)
    share = len(DRAW_REWARDS[0]) // ps.dp
    lo = ps.r("dp") * share

    def draw(n, offset, size, mine):
        return fake_scored(DRAW_REWARDS[n][2 * mine.start:2 * mine.stop], offset=100 * n + 2 * mine.start)

    first = fake_scored(DRAW_REWARDS[0][lo:lo + share], offset=lo)
    slots = [lo // 2 + i for i in range(share // 2)]
    scored, _ = draw_until_informative(first, slots, draw, 2, 1, ps, torch.device("cpu"))
    return [p["id"] for p in scored.problems]
