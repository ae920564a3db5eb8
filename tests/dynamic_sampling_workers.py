"""Spawned-rank code for tests/test_dynamic_sampling.py: DAPO dynamic sampling over a seeded fake
workload, where whether a prompt's group is informative depends only on its global position."""
from __future__ import annotations

import random

import torch


def is_informative(seed: int, position: int, q: float) -> bool:
    return random.Random(seed * 1_000_003 + position).random() < q


def fake_groups(positions: list[int], seed: int, q: float, G: int, prompt_len: int = 3):
    """A ScoredRollout of one group per prompt position: every token and problem id names the
    position; rewards (1, 0, 0, ...) where the position is informative, else all 0."""
    from r1mega.inference.generate import Rollout
    from r1mega.rl.rollout import ScoredRollout

    B, new = len(positions) * G, 2
    rows = [p for p in positions for _ in range(G)]
    tokens = torch.tensor(rows, dtype=torch.long)[:, None].expand(B, prompt_len + new).clone()
    mask = torch.zeros(B, prompt_len + new, dtype=torch.bool)
    mask[:, prompt_len:] = True
    routing = {0: torch.tensor(rows, dtype=torch.long)[None, :, None].expand(prompt_len + new - 1, B, 2).clone()}
    rewards = [float(k == 0 and is_informative(seed, p, q)) for p in positions for k in range(G)]
    rollout = Rollout(tokens, prompt_len, torch.zeros(B, dtype=torch.long), mask, mask.float() * -1.0, routing)
    return ScoredRollout(rollout, [{"id": p} for p in rows], [None] * B, [f"r{p}" for p in rows],
                         [{"accuracy": r} for r in rewards], torch.tensor(rewards, dtype=torch.float64),
                         torch.zeros(B, dtype=torch.bool), new)


def pooled_worker(rank: int, world: int, seed: int, q: float, P: int, M: int, G: int, max_draws: int) -> dict:
    """This DP rank's slots of a rollout of M minibatches of P prompts (split as grpo's
    rollout_problems splits them), dynamic sampling over the fake workload: {slot: problem id},
    the counts, and the groups' tokens/routing (each names its problem)."""
    from grpo_update_workers import model
    from r1mega.rl.rollout import draw_until_informative

    _, _, ps = model({}, world, seed=1)
    share = P // ps.dp
    slots = [j * P + ps.r("dp") * share + i for j in range(M) for i in range(share)]
    block = P * M
    draws = []

    def draw(n, offset, size, mine):
        draws.append((n, offset, size, list(mine)))
        return fake_groups([block + offset + e for e in mine], seed, q, G, prompt_len=2 + n % 3)

    scored, counts = draw_until_informative(fake_groups(slots, seed, q, G), slots, draw, G, max_draws, ps,
                                            torch.device("cpu"))
    ids = [scored.problems[i * G]["id"] for i in range(len(slots))]
    ro = scored.rollout
    for i, pid in enumerate(ids):  # each group's rows moved whole: tokens, mask, routing, rewards
        rows = slice(i * G, (i + 1) * G)
        assert [p["id"] for p in scored.problems[rows]] == [pid] * G
        assert bool((ro.tokens[rows][ro.completion_mask[rows]] == pid).all())
        assert bool((ro.routing[0][int(ro.pad[i * G]):ro.prompt_len + 1, rows] == pid).all())  # 2 new tokens
        assert scored.rewards[rows].tolist() == [float(k == 0 and is_informative(seed, pid, q)) for k in range(G)]
    return {"slots": dict(zip(slots, ids)), "counts": counts, "draws": draws}


def grpo_dynamic_worker(rank: int, world: int, overrides: list[str]) -> dict:
    """GRPO on the demo config with dynamic sampling and a reward that is informative for some
    problems only (which ones depends on the problem, so on no layout): per step, this rank's
    {slot: (prompt, rewards)} as dynamic sampling chose them; rank 0's metrics."""
    import json
    import zlib

    import r1mega.rl.grpo as grpo_module
    import r1mega.rl.rewards as rewards_module
    from rl_workers import demo_grpo

    def reward(names, text, problem, *args):
        lucky = zlib.crc32(json.dumps(problem, sort_keys=True).encode()) % 3 == 0
        return {"accuracy": float(sum(map(ord, text)) % 2) if lucky else 0.0}

    chosen = []
    real_draw = grpo_module.draw_until_informative

    def spy(first, slots, draw, G, *args):
        scored, counts = real_draw(first, slots, draw, G, *args)
        chosen.append({s: (scored.problems[i * G]["prompt"], scored.rewards[i * G:(i + 1) * G].tolist())
                       for i, s in enumerate(slots)})
        return scored, counts

    _, rows = demo_grpo(rank, overrides, ((grpo_module, "draw_until_informative", spy),
                                          (rewards_module, "reward_terms", reward)))
    return {"chosen": chosen, "rows": rows}
