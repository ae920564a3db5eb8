"""Context parallelism on the dense students (Qwen2 with q/k/v biases and tied embeddings, Llama 3
with 3 KV heads and llama3 RoPE): logits, loss and every gradient equal one process, with packed
documents and plain causal rows, alone and composed with TP (KV heads split or replicated), SP,
PP and DP."""
import pytest
import torch

from dense_cp_workers import dense_cp_worker, evaluate
from r1mega.parallel.spawn import run_ranks
from test_context_parallel import packed
from test_students import STUDENTS, check, make_student
from tiny_hf import batch

BATCH, SEQ = 4, 32  # SEQ divisible by 2 x cp x tp; BATCH by dp x microbatches
VOCAB = 96


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp_students")
    return {kind: str(root / kind) for kind in STUDENTS if make_student(kind, str(root / kind)) is not None}


@pytest.fixture(scope="module")
def data():
    ids, labels = batch(VOCAB, BATCH, SEQ, seed=5)
    docs, positions = packed(BATCH, SEQ)
    return ids, labels, docs, positions


@pytest.fixture(scope="module")
def reference(students, data):
    ids, labels, docs, positions = data
    return {(kind, is_packed): evaluate(path, {}, 1, ids, labels, docs if is_packed else None,
                                        positions if is_packed else None)
            for kind, path in students.items() for is_packed in (True, False)}


TWO_RANKS = {
    "qwen2 CP2 packed": ("qwen2", dict(cp=2), True),
    "qwen2 CP2 causal rows": ("qwen2", dict(cp=2), False),
    "llama CP2 packed": ("llama", dict(cp=2), True),
}
FOUR_RANKS = {
    "qwen2 CP2 x TP2+SP, 2 KV heads split": ("qwen2", dict(cp=2, tp=2, sp=True), True),
    "llama CP2 x TP2, 3 KV heads replicated unevenly": ("llama", dict(cp=2, tp=2), True),
    "qwen2 CP2 x PP2 (tied embedding across stages)": ("qwen2", dict(cp=2, pp=2, microbatches=2), True),
    "llama CP2 x DP2 causal rows": ("llama", dict(cp=2, microbatches=2), False),
}


def _run(world: int, layouts: dict, students, data, reference):
    ids, labels, docs, positions = data
    cases = [(students[kind], lay, is_packed) for kind, lay, is_packed in layouts.values()]
    per_rank = run_ranks(dense_cp_worker, world, cases, ids, labels, docs, positions)
    for i, (name, (kind, _, is_packed)) in enumerate(layouts.items()):
        check([r[i] for r in per_rank], reference[(kind, is_packed)], name)


def test_packed_reference_differs_from_causal(reference):
    """The packed layouts test something: documents change the logits."""
    for kind in STUDENTS:
        assert (reference[(kind, True)]["logits"] - reference[(kind, False)]["logits"]).abs().max() > 1e-2


def test_cp2_equals_one_process(students, data, reference):
    _run(2, TWO_RANKS, students, data, reference)


@pytest.mark.slow
def test_cp2_composed_with_tp_sp_pp_dp(students, data, reference):
    _run(4, FOUR_RANKS, students, data, reference)
