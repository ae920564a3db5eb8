"""The GRPO loop on the same sharded weights, end to end on 2 ranks (TP2 with EP2 folded over it,
PP2, and CP2): rollout and training log-probs agree, with and without routing replay, and the KL/clip
machinery runs."""
import pytest

from r1mega.parallel.spawn import run_ranks
from rl_workers import grpo_worker


@pytest.mark.parametrize("layout, replay", [
    (["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"], False),
    (["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"], True),
    (["parallel.pp=2"], True),
    pytest.param(["parallel.cp=2"], True, marks=pytest.mark.slow),  # CP training forward, rows of any length
])
def test_grpo_runs_and_logprobs_agree(tmp_path, layout, replay):
    overrides = [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=2", *layout,
                 "rl.group_size=4", "rl.prompts_per_step=4", "rl.kl_coef=0.01",
                 "rl.updates_per_rollout=2", "rl.clip_high=0.28", f"rl.routing_replay={str(replay).lower()}",
                 "data.micro_batch_size=8", "data.global_batch_size=8", "data.synthetic_docs=300"]
    per_rank = run_ranks(grpo_worker, 2, overrides)
    rows = per_rank[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # the rollout's own log-probs and the training forward's, same tokens, same shards
        assert r["logprob_gap_max"] < 1e-4, r
        assert r["response_len"] > 0 and r["rollout_kv_cache_bytes"] > 0
        assert r["kl"] >= 0
    assert per_rank[0]["before"] == per_rank[1]["before"]  # every rank reports the same evaluation
