"""Spawned-rank code for tests/test_rollout_probes.py."""
from __future__ import annotations

import torch

from grpo_update_workers import fake_scored, model

# Dynamic sampling, group size 2, 4 groups per draw (2 per rank under DP2), one extra draw allowed:
# draw 0 has 2 informative groups, both in rank 0's half; draw 1 one more, in rank 0's half too.
DRAW_REWARDS = [[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def dynamic_sampling_choice_worker(rank: int, world: int) -> list[int]:
    """The problem ids this rank trains on (each draw's rows split contiguously over DP, as
    `rollout_problems` does with minibatches=1); problem ids are global: 100 x draw + row."""
    from r1mega.rl.dynamic_sampling import draw_until_informative

    _, _, ps = model({}, world, seed=1)
    share = len(DRAW_REWARDS[0]) // ps.dp
    lo = ps.r("dp") * share

    def draw(n):
        return fake_scored(DRAW_REWARDS[n][lo:lo + share], offset=100 * n + lo)

    scored, _ = draw_until_informative(draw(0), draw, 2, 1, ps, torch.device("cpu"))
    return [p["id"] for p in scored.problems]
