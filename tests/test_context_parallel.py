"""Context parallelism reproduces the one-process model (logits, loss + MTP loss, gradients), with
packed documents, alone and composed with TP/SP, EP (folded over CP ranks), PP and DP."""
import pytest
import torch

from cp_workers import cp_evaluate, cp_layouts_worker
from layout_workers import build
from r1mega.config import ParallelConfig
from tiny_hf import add_mtp_layer, batch
from r1mega.parallel.context_parallel import global_order, zigzag_chunks, zigzag_index
from spawn_cases import run_ranks
from test_layouts import MTP_WEIGHT, check
from tiny_variants import make_variant

BATCH, SEQ = 4, 32  # SEQ divisible by 2 x cp x tp


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3_mtp_cp")
    make_variant("v3_grouped").save_pretrained(path)
    add_mtp_layer(str(path))
    return str(path)


def packed(b: int, s: int):
    """Document ids with uneven boundaries (and trailing padding) and per-document positions."""
    docs = torch.zeros(b, s, dtype=torch.long)
    for row, cuts in enumerate([(5, 19), (11, 12), (3, 29), (17, 30)][:b]):
        docs[row, cuts[0]:] = 1
        docs[row, cuts[1]:] = 2
    docs[0, -4:] = -1
    starts = torch.cat([torch.ones(b, 1, dtype=torch.bool), docs[:, 1:] != docs[:, :-1]], 1)
    idx = torch.arange(s).expand(b, s)
    first = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
    return docs, idx - first


@pytest.fixture(scope="module")
def reference(checkpoint):
    ids, labels = batch(128, BATCH, SEQ, seed=3)
    docs, positions = packed(BATCH, SEQ)
    model, ps = build(checkpoint, ParallelConfig(), 1)
    packed_ref = cp_evaluate(model, ps, ids, labels, docs, positions, 1, MTP_WEIGHT)
    causal_ref = cp_evaluate(model, ps, ids, labels, None, None, 1, MTP_WEIGHT)
    return ids, labels, docs, positions, packed_ref, causal_ref


def test_zigzag_split_balances_causal_work():
    s, cp = 64, 4
    held = torch.cat([zigzag_index(s, cp, r) for r in range(cp)])
    assert sorted(held.tolist()) == list(range(s))
    assert torch.equal(held[global_order(s, cp)], torch.arange(s))
    work = [sum(sum(range(a + 1, b + 1)) for a, b in zigzag_chunks(s, cp, r)) for r in range(cp)]
    assert len(set(work)) == 1  # every rank attends the same number of (query, key) pairs




CP_LAYOUTS_4 = {
    "CP4": dict(cp=4),
    "CP2 x TP2+SP": dict(cp=2, tp=2, sp=True),
    "CP2 x EP4 etp1 (EP folded over CP and TP)": dict(cp=2, tp=2, ep=4, etp=1, sp=True),
    "CP2 x PP2, full recompute": dict(cp=2, pp=2, microbatches=2, recompute="full"),
    "CP2 x DP2 x EP2": dict(cp=2, ep=2, microbatches=2, recompute="selective"),
}


def test_cp2_layouts(checkpoint, reference):
    ids, labels, docs, positions, packed_ref, causal_ref = reference
    layouts = {"CP2": (dict(cp=2), packed_ref),
               "CP2 x EP2, full recompute": (dict(cp=2, ep=2, recompute="full"), packed_ref),
               "CP2 causal rows": (dict(cp=2, packed=False), causal_ref)}
    per_rank = run_ranks(cp_layouts_worker, 2, checkpoint, [lay for lay, _ in layouts.values()], ids, labels, docs,
                         positions, MTP_WEIGHT)
    for i, (name, (_, ref)) in enumerate(layouts.items()):
        check([r[i] for r in per_rank], ref, name)


@pytest.mark.slow
def test_cp4_and_composed_layouts(checkpoint, reference):
    ids, labels, docs, positions, ref, _ = reference
    per_rank = run_ranks(cp_layouts_worker, 4, checkpoint, list(CP_LAYOUTS_4.values()), ids, labels, docs,
                         positions, MTP_WEIGHT)
    for i, name in enumerate(CP_LAYOUTS_4):
        check([r[i] for r in per_rank], ref, name)


@pytest.mark.slow
def test_cp2_with_tp_sp_pp_ep_on_eight_ranks(checkpoint, reference):
    ids, labels, docs, positions, ref, _ = reference
    lay = dict(cp=2, tp=2, sp=True, pp=2, ep=4, etp=1, microbatches=2, recompute="selective")
    per_rank = run_ranks(cp_layouts_worker, 8, checkpoint, [lay], ids, labels, docs, positions, MTP_WEIGHT)
    check([r[0] for r in per_rank], ref, "CP2 x TP2+SP x PP2 x EP4 etp1")
