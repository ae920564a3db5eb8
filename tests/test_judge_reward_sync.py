"""Probe: every TP/CP/PP rank of a GRPO replica judged the same responses for itself, but judging
is not a pure function of the text: a sandboxed `print(*{"apple", "kiwi", "plum", "fig"})` printed
three different orders in six runs (each process its own hash seed), programs race the wall clock,
and math-verify's timeouts are wall-clock. Ranks holding shards of one model could so train on
different rewards. Now the replica's first rank judges and the others receive its rewards (and run
no programs)."""
import torch

from spawn_cases import run_ranks  # ranks forked from the session's prepared server
from tests.reward_sync_probe_workers import judge_with_rank_dependent_verdicts


def _check(results, first_of_slice):
    for r, res in enumerate(results):
        src = first_of_slice(r)
        want = torch.tensor([[float(src), 10.0 * src + i] for i in range(3)], dtype=torch.float64)
        assert torch.equal(res["terms"], want), (r, res["terms"])
        assert res["judged"] == (1 if r == src else 0)


def test_tp_and_pp_ranks_of_a_replica_train_on_its_first_ranks_rewards():
    # world 4 = tp2 x pp2 (rank order tp fastest, pp slowest): the replica's first rank is 0
    _check(run_ranks(judge_with_rank_dependent_verdicts, 4, 2, 1, 2), lambda r: 0)


def test_each_dp_slice_judges_its_own_responses():
    # world 4 = tp2 x cp1 x dp2: slices {0, 1} and {2, 3}
    results = run_ranks(judge_with_rank_dependent_verdicts, 4, 2, 1, 1)
    assert [r["dp"] for r in results] == [0, 0, 1, 1]
    _check(results, lambda r: r - r % 2)
