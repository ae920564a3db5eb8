"""Spawned-rank code for tests/test_exact_rollouts_probes.py (no transformers import)."""
from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOLATILE = ("step_seconds",)  # wall-clock fields differ between any two runs


def _default_rows(overrides: list[str]) -> list[dict]:
    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo

    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml"), overrides)
    grpo(cfg, eval_problems=0)
    rows = [json.loads(line) for line in open(os.path.join(cfg.train.run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def leak_worker(rank: int, world: int, exact_first: list[str], default: list[str]) -> dict:
    """A default-path GRPO run, optionally after an exact-rollouts run in the same process."""
    from r1mega.kernels import batch_invariant

    if exact_first:
        _default_rows(exact_first)
    mode_after_exact = batch_invariant.enabled()
    return {"mode_after_exact": mode_after_exact, "rows": _default_rows(default)}


def long_prompt_worker(rank: int, world: int, overrides: list[str]) -> dict:
    """exact_grpo_worker with every prompt behind a filler of 0..95 tokens (set by the prompt), so
    prompts of a step have very different lengths, many over several 32-key blocks."""
    from r1mega.data.prompts import PromptSource
    from rl_workers import exact_grpo_worker

    encode = PromptSource.encode

    def padded(self, rendered):
        ids = encode(self, rendered)
        filler = [(7 * i + sum(ids)) % 50 + 20 for i in range((sum(ids) * 13) % 96)]
        return ids[:1] + filler + ids[1:]

    PromptSource.encode = padded
    try:
        return exact_grpo_worker(rank, world, overrides)
    finally:
        PromptSource.encode = encode


def varied_reward_worker(rank: int, world: int, overrides: list[str]) -> dict:
    """exact_grpo_worker with a reward that differs within groups (a random tiny model never answers
    right), so the updates move the weights and step 2 samples from a changed policy."""
    import r1mega.rl.rewards as rewards_module
    from rl_workers import exact_grpo_worker

    terms = rewards_module.reward_terms  # what the rollout's judge_batch judges each output with
    rewards_module.reward_terms = lambda names, text, *args: {"accuracy": float(sum(map(ord, text)) % 3)}
    try:
        return exact_grpo_worker(rank, world, overrides)
    finally:
        rewards_module.reward_terms = terms
