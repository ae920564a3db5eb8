"""GRPO logs the rollout engine's work each step (rollout_prefill_tokens, rollout_recomputed_tokens,
rollout_preemptions, rollout_decode_row_steps): one prefill per prompt group, one decoding row-step
per token after a row's first, and a cache budget's preemptions with their recomputation, while the
rollouts stay the same."""
import pytest

from rl_workers import grpo_worker


def _run(tmp_path, name, extra=()):
    return grpo_worker(0, 1, [f"train.run_dir={tmp_path}/{name}", f"data.cache_dir={tmp_path}/data",
                              "train.steps=2", "rl.group_size=4", "rl.prompts_per_step=3", "rl.max_new_tokens=40",
                              "data.micro_batch_size=12", "data.global_batch_size=12", "data.synthetic_docs=300",
                              *extra])["rows"]


def test_grpo_logs_the_rollout_engines_work(tmp_path):
    free = _run(tmp_path, "free")
    tight = _run(tmp_path, "tight", ["rl.rollout_cache_tokens=64"])
    rows = 3 * 4
    for a, b in zip(free, tight):
        # the budget changes the work, not the rollouts
        assert (a["reward"], a["response_len"]) == (b["reward"], b["response_len"])
        # each row's first token comes from its group's prefill, every later one from a decoding step
        assert a["rollout_decode_row_steps"] == pytest.approx(rows * (a["response_len"] - 1))
        assert a["rollout_preemptions"] == 0 and a["rollout_recomputed_tokens"] == 0
        # the 3 groups' prompts ("Q: a+b=", a few tokens each), prefilled once per group, not per sample
        assert 3 <= a["rollout_prefill_tokens"] <= 3 * 12
        assert b["rollout_preemptions"] > 0 and b["rollout_recomputed_tokens"] > 0
        assert b["rollout_prefill_tokens"] >= a["rollout_prefill_tokens"] + b["rollout_recomputed_tokens"]
