"""Dense students (Qwen2/Qwen2.5, Llama 3): equal to transformers, every layout equal to one
process, cached decoding equal to full re-forwards, and SFT -> export -> transformers."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from r1mega.config import load_config
from tiny_hf import batch, randomize
from r1mega.models.dense.model import kv_heads_of_rank
from r1mega.models.family import family_for_hf
from spawn_cases import run_ranks
from student_workers import PROMPTS, decode, evaluate, students_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, SEQ = 4, 12  # SEQ divisible by tp 2, 3, 4 (SP); BATCH by dp x microbatches
SHAPES = dict(vocab_size=96, hidden_size=48, intermediate_size=48, max_position_embeddings=256)
STUDENTS = {
    # Qwen2.5-style: q/k/v biases, tied embeddings, 2 KV heads (replicated at TP4), YaRN
    "qwen2": ("Qwen2", dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True,
                            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                             "original_max_position_embeddings": 8})),
    # Llama-3-style: llama3 rope scaling, 3 KV heads (split at TP3, replicated unevenly at TP2), biases
    "llama": ("Llama", dict(num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                            attention_bias=True, tie_word_embeddings=False,
                            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8})),
}


def make_student(kind: str, path: str, seed: int = 0):
    import transformers

    cls, overrides = STUDENTS[kind]
    cfg = getattr(transformers, f"{cls}Config")(**SHAPES, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).float().eval()
    randomize(model, seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return {kind: (str(root / kind), make_student(kind, str(root / kind))) for kind in STUDENTS}


@pytest.fixture(scope="module")
def data():
    return batch(SHAPES["vocab_size"], BATCH, SEQ, seed=3)


@pytest.fixture(scope="module")
def reference(students, data):
    ids, labels = data
    return {kind: evaluate(path, {}, 1, ids, labels) for kind, (path, _) in students.items()}


@pytest.mark.parametrize("kind", sorted(STUDENTS))
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
    assert set(ours["grads"]) == set(hf_grads)  # tied: no lm_head; biases where the arch has them
    for name, g in hf_grads.items():
        torch.testing.assert_close(ours["grads"][name], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def check(results: list[dict], ref: dict, name: str):
    for r in results:
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-5), name
    logits = {}
    for r in results:
        if "logits" in r:
            torch.testing.assert_close(logits.setdefault(r["dp"], r["logits"]), r["logits"])  # TP ranks agree
    torch.testing.assert_close(torch.cat([logits[d] for d in sorted(logits)]), ref["logits"], atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"{name} logits: {m}")
    grads = {}
    for r in results:
        grads.update(r.get("grads", {}))
    assert set(grads) == set(ref["grads"]), f"{name}: {set(grads) ^ set(ref['grads'])}"
    for key, g in ref["grads"].items():
        torch.testing.assert_close(grads[key], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name} {key}: {m}")


FOUR_RANKS = {
    "qwen2 TP2 x PP2 (1f1b)": ("qwen2", dict(tp=2, pp=2, microbatches=2)),
    "qwen2 TP4, 2 KV heads replicated": ("qwen2", dict(tp=4)),
    "qwen2 TP2+SP x DP2": ("qwen2", dict(tp=2, sp=True)),
    "qwen2 PP2 interleaved v2 x DP2 (tied embedding across stages)": (
        "qwen2", dict(pp=2, schedule="interleaved", virtual=2, microbatches=2)),
    "llama TP2+SP x PP2, 3 KV heads replicated unevenly": ("llama", dict(tp=2, sp=True, pp=2, microbatches=2)),
}
THREE_RANKS = {
    "llama TP3, 3 KV heads split": ("llama", dict(tp=3)),
    "llama TP3+SP": ("llama", dict(tp=3, sp=True)),
}


def test_parameter_spec_is_typed():
    from r1mega.parallel.param_spec import ParamSpec, spec_of, tag

    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="unknown parameter spec field"):
        tag(p, tp_shard=0)
    with pytest.raises(ValueError, match="either TP-sharded"):
        tag(p, tp_shard_dim=0, tp_partial="region")
    tag(tag(p, tp_shard_dim=0), weight_decay=False)  # facts accumulate
    assert spec_of(p) == ParamSpec(tp_shard_dim=0, weight_decay=False) and not spec_of(p).decays(p)
    assert spec_of(torch.zeros(3)).init_kind(torch.zeros(3)) == "zeros"


def test_kv_heads_of_rank():
    assert [kv_heads_of_rank(6, 3, 3, r)[:2] for r in range(3)] == [(0, 1), (1, 1), (2, 1)]
    first, n, of_q = kv_heads_of_rank(6, 3, 2, 1)  # query heads 3, 4, 5 use KV heads 1, 2, 2
    assert (first, n, of_q) == (1, 2, [0, 1, 1])
    assert [kv_heads_of_rank(4, 2, 4, r)[0] for r in range(4)] == [0, 0, 1, 1]


def test_layouts_equal_one_process_and_decoding_is_cached_exactly(students, data, reference):
    ids, labels = data
    paths = {kind: path for kind, (path, _) in students.items()}
    one = {kind: decode(path, {}, 1) for kind, path in paths.items()}
    for kind, res in one.items():
        assert torch.equal(res["cached"], res["full"]), kind
        assert res["cached"].shape == (len(PROMPTS), 8 + 5)
    # a GQA cache holds keys and values of the KV heads only: 2 x kv_heads x head_dim per token and layer
    assert one["qwen2"]["values_per_token"] == 2 * 2 * 12 and one["llama"]["values_per_token"] == 2 * 3 * 8

    cases = [("eval", paths[k], lay) for k, lay in FOUR_RANKS.values()]
    cases += [("decode", paths["qwen2"], dict(tp=2, pp=2)), ("decode", paths["llama"], dict(tp=2, sp=True))]
    per_rank = run_ranks(students_worker, 4, cases, ids, labels)
    for i, (name, (kind, _)) in enumerate(FOUR_RANKS.items()):
        check([r[i] for r in per_rank], reference[kind], name)
    for i, kind in ((len(FOUR_RANKS), "qwen2"), (len(FOUR_RANKS) + 1, "llama")):
        for r in per_rank:
            assert torch.equal(r[i]["cached"], r[i]["full"]), kind
            assert torch.equal(r[i]["cached"], one[kind]["cached"]), kind

    cases = [("eval", paths[k], lay) for k, lay in THREE_RANKS.values()] + [("decode", paths["llama"], dict(tp=3))]
    per_rank = run_ranks(students_worker, 3, cases, ids, labels)
    for i, (name, (kind, _)) in enumerate(THREE_RANKS.items()):
        check([r[i] for r in per_rank], reference[kind], name)
    for r in per_rank:
        assert torch.equal(r[-1]["cached"], one["llama"]["cached"])


def test_distillation_sft_lowers_the_loss_and_exports_to_transformers(tmp_path):
    """Import an HF student, SFT it on R1-format chat data, export: transformers gives our logits."""
    import transformers

    from r1mega.models.weights import load_weights
    from r1mega.parallel.layout import single_process_state
    from r1mega.models.weights import PieceReader
    from r1mega.train.trainer import train
    from tools.convert import do_export, do_import

    config = os.path.join(ROOT, "configs", "tiny", "distill_student.yaml")
    student = load_config(config).student
    hf_dir, ckpt, out = str(tmp_path / "hf"), str(tmp_path / "ck"), str(tmp_path / "out")
    hf_cfg = transformers.Qwen2Config(**student.to_hf())
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(hf_cfg).save_pretrained(hf_dir)
    do_import(hf_dir, ckpt, dtype="float32")

    run = tmp_path / "run"
    cfg = load_config(config, [f"train.run_dir={run}", f"data.cache_dir={tmp_path / 'data'}", "train.steps=16",
                               f"train.load={ckpt}"])
    losses = train(cfg, "sft")["losses"]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses

    trained = str(run / "checkpoints" / "step_00000016")
    do_export(trained, out)
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "qwen2"
    family, model_cfg = family_for_hf(out)
    ours = family.build_stage(model_cfg, single_process_state())
    load_weights(ours, PieceReader(trained, "model"))
    ids = torch.randint(0, student.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(ids).logits.transpose(0, 1)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    start = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)(ids).logits
    assert (start - theirs).abs().max() > 1e-2  # the export carries the trained weights


def verify_on_ranks(nproc: int, *args: str) -> float:
    """`r1mega verify-hf <args>` on nproc ranks started with torchrun's environment (tests/spawn_cases.py;
    tests/test_verify_hf.py runs the command under torchrun itself): exit status 0, the worst logit gap."""
    import re

    from spawn_cases import cli_on_ranks

    status, out = cli_on_ranks(nproc, "verify-hf", *args)
    assert status == 0, out[-3000:]
    assert "gradients: worst" in out
    return float(re.fullmatch(r"max_abs_logit_diff=(\S+)", out.strip().splitlines()[-1]).group(1))


@pytest.mark.slow
def test_verify_hf_command_on_students(students, tmp_path):
    """The verify-hf command users run: Qwen2 under TP2 x PP2 (4 ranks), from the HF directory and from
    an imported r1mega checkpoint; Llama with 3 KV heads under TP3 (3 ranks)."""
    from tools.convert import do_import

    qwen, llama = students["qwen2"][0], students["llama"][0]
    assert verify_on_ranks(4, "--hf-dir", qwen, "--tp", "2", "--pp", "2") < 1e-4
    do_import(qwen, str(tmp_path / "ck"), dtype="float32")
    assert verify_on_ranks(4, "--hf-dir", qwen, "--ckpt", str(tmp_path / "ck"), "--tp", "2", "--pp", "2",
                           "--sp") < 1e-4
    assert verify_on_ranks(3, "--hf-dir", llama, "--tp", "3") < 1e-4


@pytest.mark.slow
def test_grpo_on_a_student_under_tp2_with_replicated_kv(tmp_path):
    """Students are RL'ed by the same GRPO code: rollouts on the training shards (per-head KV cache),
    their log-probs equal the training forward's."""
    from rl_workers import grpo_worker

    student = ["student.vocab_size=384", "student.hidden_size=32", "student.intermediate_size=64",
               "student.num_layers=2", "student.num_heads=4", "student.num_kv_heads=1",
               "student.tie_word_embeddings=true"]
    overrides = [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=2",
                 "parallel.tp=2", "parallel.sp=true", "rl.group_size=4", "rl.prompts_per_step=4", "rl.kl_coef=0.01",
                 "rl.updates_per_rollout=2", "data.micro_batch_size=8", "data.global_batch_size=8",
                 "data.synthetic_docs=300", *student]
    rows = run_ranks(grpo_worker, 2, overrides)[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["logprob_gap_max"] < 1e-4, r
        assert r["response_len"] > 0 and r["rollout_kv_cache_bytes"] > 0
