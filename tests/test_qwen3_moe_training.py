"""Qwen3-MoE training with its load-balancing loss on: the aux loss, the LM loss and every gradient
under TP2 (tokens sliced for routing), TP2+SP x EP2, PP2 x EP2 and CP2 x EP2 equal one process, as
do full and selective recompute; rollouts record each MoE layer's experts (paged and static engines
alike, equal to what a full forward chooses) and replaying them reproduces the logits."""
import pytest
import torch

from qwen3_moe_hf import make_qwen3_moe
from qwen3_moe_workers import recorded_routing, train_step, train_worker
from spawn_cases import run_ranks
from tiny_hf import batch

LAYOUTS = {"TP2 x DP2": dict(tp=2), "TP2+SP x EP2": dict(tp=2, sp=True, ep=2),
           "PP2 x EP2": dict(pp=2, ep=2, microbatches=2), "CP2 x EP2": dict(cp=2, ep=2)}


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("qwen3_moe_aux") / "hf")
    make_qwen3_moe("only0_norm_untied", p, output_router_logits=True, router_aux_loss_coef=0.5)
    return p


def test_aux_loss_and_gradients_equal_one_process_under_layouts_and_recompute(path):
    ids, labels = batch(96, 4, 12, seed=4)
    one = train_step(path, {}, 1, ids, labels)
    assert one["aux"] > 1.0 and one["max_load"] > 1.0
    for recompute in (("full", ()), ("selective", ("moe_act", "layernorm"))):
        again = train_step(path, {}, 1, ids, labels, recompute)
        assert again["aux"] == one["aux"] and again["loss"] == one["loss"]
        for k, g in one["grads"].items():
            assert torch.equal(again["grads"][k], g), (recompute, k)
    per_rank = run_ranks(train_worker, 4, [(path, lay) for lay in LAYOUTS.values()], ids, labels)
    for i, name in enumerate(LAYOUTS):
        results = [r[i] for r in per_rank]
        for r in results:
            assert abs(r["aux"] - one["aux"]) < 1e-6, name
        assert all(abs(r["loss"] - one["loss"]) < 1e-5 for r in results), name
        grads = {}
        for r in results:
            grads.update(r.get("grads", {}))
        assert set(grads) == set(one["grads"]), name
        for k, g in one["grads"].items():
            torch.testing.assert_close(grads[k], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name} {k}: {m}")


def test_rollouts_record_the_experts_and_replay_reproduces_the_logits(path):
    r = recorded_routing(path)
    paged, static = r["paged"], r["static"]
    assert torch.equal(paged.tokens, static.tokens)
    assert sorted(paged.routing) == sorted(static.routing) == sorted(r["full"]) == [1, 2, 3]  # layer 0 is dense
    for layer, chosen in r["full"].items():
        n = chosen.shape[0]
        for rec in (paged.routing[layer], static.routing[layer]):
            assert torch.equal(rec[:n].long().sort(-1).values, chosen.sort(-1).values), layer
    torch.testing.assert_close(r["replayed"], r["plain"], atol=0, rtol=0)
