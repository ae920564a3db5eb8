"""Pipeline schedules give the no-pipeline gradients; 1F1B bounds the activations in flight."""
import pytest
import torch

from tiny_hf import batch
from r1mega.parallel.pipeline import interleaved_order, one_f_one_b_order
from spawn_cases import run_ranks
from train_workers import grads_under, schedules_worker

MICRO = 4


@pytest.fixture(scope="module")
def data_and_reference():
    ids, labels = batch(128, 8, 12, seed=5)
    ref = grads_under(0, 1, {}, 1, "1f1b", ids, labels, MICRO)
    return ids, labels, ref


def assert_same(res, ref, name):
    assert res["loss"] == pytest.approx(ref["loss"], abs=1e-5), name
    assert res["mtp_loss"] == pytest.approx(ref["mtp_loss"], abs=1e-5), name
    grads = dict(res["grads"])
    copy = grads.pop("model.layers.8.embed_tokens.weight", None)
    if copy is not None:
        torch.testing.assert_close(copy, grads["model.embed_tokens.weight"], atol=0, rtol=0)
    assert set(grads) == set(ref["grads"]), name
    for k, g in ref["grads"].items():
        torch.testing.assert_close(grads[k], g, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name} {k}: {m}")


CASES = {
    "PP4 1f1b": (dict(pp=4), 1, "1f1b"),
    "PP4 interleaved v2": (dict(pp=4), 2, "interleaved"),
    "PP2 x DP2 interleaved v2": (dict(pp=2), 2, "interleaved"),
    "PP2 x TP2 1f1b": (dict(pp=2, tp=2, sp=True), 1, "1f1b"),
    "PP4 gpipe": (dict(pp=4), 1, "gpipe"),
}


def test_schedules_match_no_pipeline(data_and_reference):
    ids, labels, ref = data_and_reference
    per_rank = run_ranks(schedules_worker, 4, list(CASES.values()), ids, labels, MICRO)
    for i, name in enumerate(CASES):
        merged = {"loss": per_rank[0][i]["loss"], "mtp_loss": per_rank[0][i]["mtp_loss"], "grads": {}}
        for r in per_rank:
            assert r[i]["loss"] == pytest.approx(merged["loss"], abs=1e-6)
            merged["grads"].update(r[i]["grads"])
        assert_same(merged, ref, name)
    # memory: 1F1B keeps at most pp - rank microbatches alive, GPipe all of them
    in_flight_1f1b = [r[0]["max_in_flight"] for r in per_rank]
    assert in_flight_1f1b == [4, 3, 2, 1]
    assert all(r[4]["max_in_flight"] == MICRO for r in per_rank)


@pytest.mark.parametrize("pp, m, v", [(2, 4, 2), (4, 8, 2), (4, 4, 3)])
def test_interleaved_order_runs_every_pass_once(pp, m, v):
    for rank in range(pp):
        order = interleaved_order(pp, rank, m, v)
        assert sorted(order) == sorted([(k, mb, c) for k in "FB" for mb in range(m) for c in range(v)])
        seen = set()
        for kind, mb, c in order:  # a backward never precedes its forward
            assert kind == "F" or ("F", mb, c) in seen
            seen.add((kind, mb, c))
    assert one_f_one_b_order(4, 0, 6, 1)[:4] == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0), ("F", 3, 0)]
