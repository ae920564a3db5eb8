"""Hostile probes of the rollout engine and the GRPO update (issues 20, 21).

The engine probes (max_rows / max_cache_tokens / block sizes, 1-token and block-boundary prompts,
EOS inside prompts, greedy vs top-k 1 vs tiny top-p, dense and V3.2 students, TP2 x EP2 with a DP
rank out of rows, PP2, CP2) and the GRPO refinements under DP2, TP2 x EP2, PP2 and CP2 agreed with
one process; what stays here is what a probe found wrong.
"""
from __future__ import annotations



def test_dynamic_sampling_trains_the_same_problems_on_one_process_and_dp2():
    """draw_until_informative itself, on one process and on 2 gloo DP ranks, over the same draws:
    the same groups in the same order (slot by slot). Before the fix one process pooled all 3
    informative groups (+ 1 filler) while DP2 kept 2 and filled 2.
    End to end (`configs/tiny/r1_zero_demo.yaml`, rl.dynamic_sampling=true
    rl.dynamic_sampling_max_draws=2 rl.kl_coef=0.01 train.steps=2): step 2's kl is 0.000175 on one
    process and 0.000194 under parallel.dp=2 (and tp=2,ep=2 on 4 ranks); without dynamic sampling
    every logged number agrees."""
    from spawn_cases import run_ranks
    from rollout_probe_workers import dynamic_sampling_choice_worker

    one = dynamic_sampling_choice_worker(0, 1)
    dp2 = run_ranks(dynamic_sampling_choice_worker, 2)
    assert one == list(range(8))  # slots 2 and 3 found nothing informative in either draw: fillers
    assert dp2[0] + dp2[1] == one
