"""The update without padding: rollout sequences packed whole into rows (each its own document,
positions restarting, routing moved with its token) give the padded path's log-probs, loss, metric
sums and every gradient, in one process and under TP2 x EP2 and PP2."""
import pytest
import torch

from grpo_update_workers import update_parity_worker

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
    # the routing-bias update's expert loads: the trained sequences' tokens, not the pad slots or the
    # unkept sequence the padded rows also hold (they moved DeepSeek-V3's biases by the layout)
    assert out["padded_loads"].sum() > 0 and torch.equal(out["padded_loads"], out["packed_loads"]), (
        out["padded_loads"], out["packed_loads"])
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


@pytest.fixture(scope="module")
def layout_runs(request):
    """The selected layouts below in one spawn of two ranks."""
    from spawn_cases import run_cases, selected_params

    cases = selected_params(request, "test_packed_update_equals_padded_under_a_layout")
    return run_cases(2, {node: (update_parity_worker, (p["par"], ALL_OPTIONS, 3)) for node, p in cases.items()})


@pytest.mark.parametrize("par", [dict(tp=2, ep=2, etp=1), dict(pp=2),
                                 pytest.param(dict(cp=2), marks=pytest.mark.slow)], ids=["tp2xep2", "pp2", "cp2"])
def test_packed_update_equals_padded_under_a_layout(request, layout_runs, par):
    for rank_out in layout_runs[request.node.name]:
        check_parity(rank_out)


def test_packed_rows_by_hand():
    """Sequences (prompt from its first real token to the last sample) placed whole by first-fit
    decreasing; each its own document with positions from 0; routing and log-probs move along."""
    from r1mega.inference.generate import Rollout
    from r1mega.rl.train_batch import pack_batch

    # 3 sequences, prompt width 3 (pads 2, 0, 1), 3 sampling steps; they stop after 1, 3 and 2 samples
    tokens = torch.tensor([[0, 0, 11, 12, 0, 0], [20, 21, 22, 23, 24, 25], [0, 31, 32, 33, 34, 0]])
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 3], mask[1, 3:] = True, True
    mask[2, 3:5] = True
    logprobs = torch.where(mask, -tokens.float() / 100, torch.zeros(3, 6))
    routing = {0: (tokens.t()[:, :, None] * 10 + torch.arange(2)).clone()}  # [S, B, k]: names each token
    r = Rollout(tokens, 3, torch.tensor([2, 0, 1]), mask, logprobs, routing)
    keep = torch.tensor([True, True, True])
    b = pack_batch(r, keep, torch.arange(3), budget=6, multiple=4)
    # lengths (inputs): seq0 11 -> 1 token, seq1 20..24 -> 5, seq2 31..33 -> 3; budget 6: {0, 1}, {2};
    # rows padded to a multiple of 4, unused slots one-token documents
    assert b.input_ids.tolist() == [[11, 20, 21, 22, 23, 24, 0, 0], [31, 32, 33, 0, 0, 0, 0, 0]]
    assert b.targets[0, :6].tolist() == [12, 21, 22, 23, 24, 25] and b.targets[1, :3].tolist() == [32, 33, 34]
    assert b.seq.tolist() == [[0, 1, 1, 1, 1, 1, -1, -1], [2, 2, 2, -1, -1, -1, -1, -1]]
    assert b.position_ids[0, :6].tolist() == [0, 0, 1, 2, 3, 4] and b.position_ids[1, :3].tolist() == [0, 1, 2]
    assert b.attn_mask.tolist() == [[0, 1, 1, 1, 1, 1, -7, -8], [0, 0, 0, -4, -5, -6, -7, -8]]
    # trained targets: the samples only (12; 23, 24, 25; 33, 34)
    assert b.mask.tolist() == [[True, False, False, True, True, True, False, False],
                               [False, True, True, False, False, False, False, False]]
    assert torch.equal(b.rollout_logp[b.mask], -b.targets[b.mask].float() / 100)
    assert b.routing[0][:6, 0, 0].tolist() == [110, 200, 210, 220, 230, 240]  # each token's own experts
    assert b.sequences == 3 and b.slots == 16
    dropped = pack_batch(r, torch.tensor([True, False, True]), torch.arange(3), min_rows=3)
    assert dropped.input_ids.shape == (3, 3) and set(dropped.seq.flatten().tolist()) == {0, 2, -1}
