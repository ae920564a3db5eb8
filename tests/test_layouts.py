"""Every parallel layout reproduces the one-process model: logits, loss (+MTP loss) and gradients.

One spawned gloo group runs several layouts in turn (process start-up is the slow part on 2 cores).
"""
import pytest
import torch

from layout_workers import build, evaluate, layouts_worker
from r1mega.config import ParallelConfig
from tiny_hf import add_mtp_layer, batch
from spawn_cases import run_ranks
from tiny_variants import make_variant

MTP_WEIGHT = 0.3
BATCH, SEQ = 4, 16  # SEQ divisible by tp for SP; BATCH by dp x microbatches


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3_mtp")
    make_variant("v3_grouped").save_pretrained(path)
    add_mtp_layer(str(path))
    return str(path)


@pytest.fixture(scope="module")
def reference(checkpoint):
    ids, labels = batch(128, BATCH, SEQ, seed=3)
    model, ps = build(checkpoint, ParallelConfig(), 1)
    return ids, labels, evaluate(model, ps, ids, labels, 1, MTP_WEIGHT)


def check(results: list[dict], ref: dict, name: str):
    """Merge the ranks of one layout (logits by DP rank, grads by stage) and compare."""
    assert ref["mtp_loss"] > 0
    for r in results:
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-5), name
        assert r["mtp_loss"] == pytest.approx(ref["mtp_loss"], abs=1e-5), name
    logits = {}
    for r in results:
        if "logits" in r:
            prev = logits.setdefault(r["dp"], r["logits"])
            torch.testing.assert_close(prev, r["logits"])  # TP ranks agree
    full = torch.cat([logits[d] for d in sorted(logits)])
    torch.testing.assert_close(full, ref["logits"], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name} logits: {m}")
    grads = {}
    for r in results:
        grads.update(r.get("grads", {}))
    mtp_copy = grads.pop("model.layers.3.embed_tokens.weight", None)
    if mtp_copy is not None:  # PP: the last stage's embedding copy is tied to the first stage's
        torch.testing.assert_close(mtp_copy, grads["model.embed_tokens.weight"], atol=0, rtol=0)
    assert set(grads) == set(ref["grads"]), f"{name}: {set(grads) ^ set(ref['grads'])}"
    for key, g in ref["grads"].items():
        torch.testing.assert_close(grads[key], g, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name} {key}: {m}")


TWO_RANK_LAYOUTS = {
    "TP2": dict(tp=2),
    "TP2+SP": dict(tp=2, sp=True),
    "EP2": dict(ep=2),
    "PP2": dict(pp=2, microbatches=2),
    "DP2": dict(),
    "TP2 etp1 EP2 (folding)": dict(tp=2, sp=True, etp=1, ep=2),
}


def test_two_rank_layouts(checkpoint, reference):
    ids, labels, ref = reference
    per_rank = run_ranks(layouts_worker, 2, checkpoint, list(TWO_RANK_LAYOUTS.values()), ids, labels, MTP_WEIGHT)
    for i, name in enumerate(TWO_RANK_LAYOUTS):
        check([r[i] for r in per_rank], ref, name)


EIGHT_RANK_LAYOUTS = {
    "TP2 x PP2 x EP2 (dp2)": dict(tp=2, pp=2, ep=2, microbatches=2),
    "TP2+SP x PP2 x EP4 etp1 (dp2)": dict(tp=2, sp=True, pp=2, ep=4, etp=1, pp_layers=[1, 2]),
}


@pytest.mark.slow
def test_eight_rank_layouts(checkpoint, reference):
    ids, labels, ref = reference
    per_rank = run_ranks(layouts_worker, 8, checkpoint, list(EIGHT_RANK_LAYOUTS.values()), ids, labels, MTP_WEIGHT)
    for i, name in enumerate(EIGHT_RANK_LAYOUTS):
        check([r[i] for r in per_rank], ref, name)
