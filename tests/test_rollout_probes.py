"""Hostile probes of the rollout engine and the GRPO update (issues 20, 21).

The engine probes (max_rows / max_cache_tokens / block sizes, 1-token and block-boundary prompts,
EOS inside prompts, greedy vs top-k 1 vs tiny top-p, dense and V3.2 students, TP2 x EP2 with a DP
rank out of rows, PP2, CP2) and the GRPO refinements under DP2, TP2 x EP2, PP2 and CP2 agreed with
one process; what stays here is what a probe found wrong.
"""
from __future__ import annotations



def test_dynamic_sampling_trains_the_same_problems_on_one_process_and_dp2():
    """draw_until_informative itself, on one process and on 2 gloo DP ranks, over the same draws:
    the same groups in the same order. A first version pooled each rank's own groups: one process
    kept all 3 informative groups (+ 1 filler) while DP2 kept 2 and filled 2; the pool now fills
    slots in global order and moves groups between ranks.
    End to end on the demo config: tests/test_dynamic_sampling.py::
    test_grpo_trains_the_same_groups_on_one_process_dp2_tp2_ep2_and_pp2_dp2."""
    from spawn_cases import run_ranks
    from rollout_probe_workers import dynamic_sampling_choice_worker

    one = dynamic_sampling_choice_worker(0, 1)
    dp2 = run_ranks(dynamic_sampling_choice_worker, 2)
    # slot 2 takes the pool's informative group (problem 100, 101); slot 3 keeps its filler
    assert one == [0, 1, 2, 3, 100, 101, 6, 7]
    assert dp2[0] + dp2[1] == one
