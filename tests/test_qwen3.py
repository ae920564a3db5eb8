"""Qwen3 dense students (per-head q/k RMSNorm, no q/k/v bias, tied or untied embeddings): equal to
transformers on one process, TP2 x PP2 equal to one process, cached decoding equal to full
re-forwards, the HF round trip bit-exact, and the parameter count equal to transformers'."""
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from r1mega.config import DenseConfig
from r1mega.models.dense.params import count_params
from r1mega.models.family import family_for_hf
from spawn_cases import run_ranks
from student_workers import PROMPTS, decode, evaluate, students_worker
from tiny_hf import batch, randomize

BATCH, SEQ = 4, 12
SHAPES = dict(vocab_size=96, hidden_size=48, intermediate_size=48, max_position_embeddings=256)
QWEN3 = {
    # head_dim 16 != hidden / heads (as in Qwen3-8B's 128 x 32 heads > 4096), 2 KV heads, tied
    "tied": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 tie_word_embeddings=True),
    # untied, 3 KV heads (replicated unevenly at TP2), attention biases on, YaRN
    "untied": dict(num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                   attention_bias=True, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                    "original_max_position_embeddings": 8}),
}


def make_qwen3(kind: str, path: str, seed: int = 0):
    import transformers

    cfg = transformers.Qwen3Config(**SHAPES, **QWEN3[kind])
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(cfg).float().eval()
    randomize(model, seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3")
    return {kind: (str(root / kind), make_qwen3(kind, str(root / kind))) for kind in QWEN3}


@pytest.fixture(scope="module")
def data():
    return batch(SHAPES["vocab_size"], BATCH, SEQ, seed=3)


@pytest.fixture(scope="module")
def reference(students, data):
    ids, labels = data
    return {kind: evaluate(path, {}, 1, ids, labels) for kind, (path, _) in students.items()}


def test_config_reads_qwen3(students):
    _, cfg = family_for_hf(students["tied"][0])
    assert cfg.arch == "qwen3" and cfg.qk_norm and not cfg.qkv_bias and cfg.tie_word_embeddings
    assert cfg.head_size == 16
    _, cfg = family_for_hf(students["untied"][0])
    assert cfg.qkv_bias and cfg.o_bias and not cfg.tie_word_embeddings
    assert DenseConfig.from_hf(cfg.to_hf()) == cfg


@pytest.mark.parametrize("kind", sorted(QWEN3))
def test_matches_transformers(kind, students, data, reference):
    _, hf = students[kind]
    ids, labels = data
    ref_logits = hf(ids).logits
    ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    hf.zero_grad()
    ref_loss.backward()
    ours = reference[kind]
    torch.testing.assert_close(ours["logits"], ref_logits.detach(), atol=1e-5, rtol=1e-5)
    assert abs(ours["loss"] - ref_loss.item()) < 1e-5
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    assert set(ours["grads"]) == set(hf_grads)
    assert any(n.endswith("self_attn.q_norm.weight") for n in hf_grads)
    for name, g in hf_grads.items():
        torch.testing.assert_close(ours["grads"][name], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    _, cfg = family_for_hf(students[kind][0])
    assert count_params(cfg)["total"] == sum(p.numel() for p in hf.parameters())


def test_tp2_pp2_and_tp2_sp_equal_one_process_and_decode_is_cached_exactly(students, data, reference):
    from test_students import check

    ids, labels = data
    paths = {kind: path for kind, (path, _) in students.items()}
    one = decode(paths["tied"], {}, 1)
    assert torch.equal(one["cached"], one["full"]) and one["cached"].shape == (len(PROMPTS), 8 + 5)
    layouts = {"tied TP2 x PP2": ("tied", dict(tp=2, pp=2, microbatches=2)),
               "untied TP2+SP x PP2 (KV heads replicated)": ("untied", dict(tp=2, sp=True, pp=2, microbatches=2)),
               "tied TP4 (KV heads replicated)": ("tied", dict(tp=4))}
    cases = [("eval", paths[k], lay) for k, lay in layouts.values()]
    cases += [("decode", paths["tied"], dict(tp=2, pp=2))]
    per_rank = run_ranks(students_worker, 4, cases, ids, labels)
    for i, (name, (kind, _)) in enumerate(layouts.items()):
        check([r[i] for r in per_rank], reference[kind], name)
    for r in per_rank:
        assert torch.equal(r[-1]["cached"], r[-1]["full"])
        assert torch.equal(r[-1]["cached"], one["cached"])


def all_tensors(directory: str) -> dict:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, name)))
    return out


@pytest.mark.parametrize("kind", sorted(QWEN3))
def test_convert_round_trip_is_bit_exact(kind, students, tmp_path):
    import json

    from tools.convert import do_export, do_import

    path, _ = students[kind]
    do_import(path, str(tmp_path / "ck"), dtype="float32")
    do_export(str(tmp_path / "ck"), str(tmp_path / "out"))
    a, b = all_tensors(path), all_tensors(str(tmp_path / "out"))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    config = json.load(open(tmp_path / "out" / "config.json"))
    assert config["model_type"] == "qwen3"


@pytest.mark.slow
def test_verify_hf_command_on_qwen3(students):
    from test_students import verify_on_ranks

    assert verify_on_ranks(4, "--hf-dir", students["tied"][0], "--tp", "2", "--pp", "2") < 1e-4
    assert verify_on_ranks(2, "--hf-dir", students["untied"][0], "--tp", "2", "--sp") < 1e-4


@pytest.mark.parametrize("name", ["qwen3_8b", "qwen3_1.7b"])
def test_published_shapes_count_as_transformers(name):
    """configs/model/students/qwen3_*.yaml: our count = transformers' (meta device) for the same config."""
    import transformers

    from r1mega.config import load_config, validate

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    student = validate(load_config(os.path.join(root, "configs", "model", "students", f"{name}.yaml")), 1).student
    with torch.device("meta"):
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**student.to_hf()))
    assert count_params(student)["total"] == sum(p.numel() for p in hf.parameters())
