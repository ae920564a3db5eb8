"""The update without padding: rollout sequences packed whole into rows (each its own document,
positions restarting, routing moved with its token) give the padded path's log-probs, loss, metric
sums and every gradient, in one process and under TP2 x EP2 and PP2."""
import pytest
import torch

from grpo_update_workers import update_parity_worker
from r1mega.parallel.spawn import run_ranks

ALL_OPTIONS = {"kl_coef": 0.05, "routing_replay": True, "unbiased_kl": True, "opsm_delta": 0.0,
               "entropy_coef": 0.01, "keep_sampling_mask": True, "top_p": 0.9, "top_k": 40, "tis": True}


def check_parity(out: dict) -> None:
    # the same sampled tokens scored, but for sequence 3's: it takes no part in the loss (the
    # log-probs and the loss live on the last pipeline stage)
    if "padded_old" not in out:
        assert "packed_old" not in out
    else:
        check_logprobs(out)
    sa, sb = out["padded_sums"], out["packed_sums"]
    for k in sa:
        assert sb[k] == pytest.approx(sa[k], rel=1e-4, abs=1e-6), k
    assert out["padded_grads"].keys() == out["packed_grads"].keys() and out["padded_grads"]
    for name, g in out["padded_grads"].items():
        h = out["packed_grads"][name]
        assert torch.allclose(g, h, rtol=1e-4, atol=1e-6), (name, float((g - h).abs().max()))


def check_logprobs(out: dict) -> None:
    assert set(out["packed_old"]) == {k for k in out["padded_old"] if k[0] != 3}
    for key in ("old", "ref"):
        a, b = out[f"padded_{key}"], out[f"packed_{key}"]
        worst = max(abs(a[k] - b[k]) for k in b)
        assert worst < 2e-5, (key, worst)


@pytest.mark.parametrize("options, micro", [({}, 4), (ALL_OPTIONS, 3)])
def test_packed_update_equals_padded_one_process(options, micro):
    out = update_parity_worker(0, 1, {}, options, micro)
    check_parity(out)
    assert out["packed_sums"]["loss"] != 0
    if options:  # every option acts on this rollout
        assert out["packed_sums"]["clipped"] > 0 and out["packed_sums"]["opsm_masked"] > 0
    # fewer token slots than the padded rows, as many real tokens
    assert out["packed_real"] == out["padded_real"] and out["packed_slots"] < out["padded_slots"]


@pytest.mark.parametrize("par", [dict(tp=2, ep=2, etp=1), dict(pp=2),
                                 pytest.param(dict(cp=2), marks=pytest.mark.slow)], ids=["tp2xep2", "pp2", "cp2"])
def test_packed_update_equals_padded_under_a_layout(par):
    for rank_out in run_ranks(update_parity_worker, 2, par, ALL_OPTIONS, 3):
        check_parity(rank_out)
