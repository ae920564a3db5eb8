"""Qwen3-MoE under TP2, EP2, PP2, TP2+SP x EP2, PP2 x EP2, TP2 x EP2 with expert-TP 1 and an
interleaved PP2 (spawned gloo ranks, DP filling the rest) equals one process: loss, logits, every
gradient; cached greedy decoding equals full re-forwards on one process and under TP2 x EP2."""
import pytest
import torch

from qwen3_moe_hf import VARIANTS, make_qwen3_moe
from spawn_cases import run_ranks
from student_workers import decode, evaluate, students_worker
from test_students import check
from tiny_hf import batch

LAYOUTS = {
    "TP2 x DP2 (3 KV heads replicated)": ("step2_raw_tied", dict(tp=2)),
    "EP2 x DP2": ("only0_norm_untied", dict(ep=2)),
    "PP2 x DP2 (tied embedding across stages)": ("step2_raw_tied", dict(pp=2, microbatches=2)),
    "TP2+SP x EP2": ("only0_norm_untied", dict(tp=2, sp=True, ep=2)),
    "PP2 x EP2": ("only0_norm_untied", dict(pp=2, ep=2, microbatches=2)),
    "TP2 x EP2, expert-TP 1": ("only0_norm_untied", dict(tp=2, ep=2, etp=1)),
    "PP2 interleaved v2 x DP2 (tied)": ("step2_raw_tied", dict(pp=2, schedule="interleaved", virtual=2, microbatches=2)),
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_moe_layouts")
    for kind in VARIANTS:
        make_qwen3_moe(kind, str(root / kind))
    return {kind: str(root / kind) for kind in VARIANTS}


def test_layouts_equal_one_process_and_decode_is_cached_exactly(paths):
    ids, labels = batch(96, 4, 12, seed=3)
    reference = {kind: evaluate(path, {}, 1, ids, labels) for kind, path in paths.items()}
    one = decode(paths["only0_norm_untied"], {}, 1)
    assert torch.equal(one["cached"], one["full"])
    cases = [("eval", paths[kind], lay) for kind, lay in LAYOUTS.values()]
    cases += [("decode", paths["only0_norm_untied"], dict(tp=2, ep=2))]
    per_rank = run_ranks(students_worker, 4, cases, ids, labels)
    for i, (name, (kind, _)) in enumerate(LAYOUTS.items()):
        check([r[i] for r in per_rank], reference[kind], name)
    for r in per_rank:
        assert torch.equal(r[-1]["cached"], r[-1]["full"]) and torch.equal(r[-1]["cached"], one["cached"])
