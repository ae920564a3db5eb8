"""Rank workers of tests/test_judge_reward_sync.py (module-level so spawn can pickle them)."""
import torch

from r1mega.parallel.config import ParallelConfig
from r1mega.parallel.layout import build_parallel_state
from r1mega.rl.rewards import judge_once


def judge_with_rank_dependent_verdicts(rank: int, world: int, tp: int, cp: int, pp: int):
    ps = build_parallel_state(ParallelConfig(tp=tp, cp=cp, pp=pp, dp=world // (tp * cp * pp)))
    calls = []

    def judge():  # as a racy program or a hash-seeded set order would: each rank its own verdict
        calls.append(rank)
        return [{"accuracy": float(rank), "format": 10.0 * rank + i} for i in range(3)]

    terms = judge_once(ps, ["accuracy", "format", "accuracy"], 3, judge, torch.device("cpu"))
    return {"terms": torch.tensor([[t["accuracy"], t["format"]] for t in terms]), "judged": len(calls),
            "dp": ps.r("dp")}
