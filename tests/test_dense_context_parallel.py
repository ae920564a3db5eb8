"""Context parallelism on the dense students (Qwen2 with q/k/v biases and tied embeddings, Llama 3
with 3 KV heads and llama3 RoPE, Qwen3 with per-head q/k norms): logits, loss and every gradient equal one process, with packed
documents and plain causal rows, alone and composed with TP (KV heads split or replicated), SP,
PP and DP."""
import pytest

from dense_cp_workers import dense_cp_worker, evaluate
from spawn_cases import run_ranks
from test_context_parallel import packed
from test_qwen3 import make_qwen3
from test_students import STUDENTS, check, make_student
from tiny_hf import batch

BATCH, SEQ = 4, 32  # SEQ divisible by 2 x cp x tp; BATCH by dp x microbatches
VOCAB = 96


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp_students")
    paths = {kind: str(root / kind) for kind in STUDENTS if make_student(kind, str(root / kind)) is not None}
    make_qwen3("untied", str(root / "qwen3"))
    return {**paths, "qwen3": str(root / "qwen3")}


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
    "qwen3 CP2 packed (q/k norms, 3 KV heads)": ("qwen3", dict(cp=2), True),
}
FOUR_RANKS = {
    "qwen2 CP2 x TP2+SP, 2 KV heads split": ("qwen2", dict(cp=2, tp=2, sp=True), True),
    "llama CP2 x TP2, 3 KV heads replicated unevenly": ("llama", dict(cp=2, tp=2), True),
    "qwen2 CP2 x PP2 (tied embedding across stages)": ("qwen2", dict(cp=2, pp=2, microbatches=2), True),
    "llama CP2 x DP2 causal rows": ("llama", dict(cp=2, microbatches=2), False),
    "qwen3 CP2 x TP2+SP, q/k norms, 3 KV heads replicated unevenly": ("qwen3", dict(cp=2, tp=2, sp=True), True),
}


def _cases(layouts: dict, students, data) -> tuple:
    ids, labels, docs, positions = data
    return [(students[kind], lay, is_packed) for kind, lay, is_packed in layouts.values()], ids, labels, docs, positions


def _check(per_rank, layouts: dict, reference):
    for i, (name, (kind, _, is_packed)) in enumerate(layouts.items()):
        check([r[i] for r in per_rank], reference[(kind, is_packed)], name)


@pytest.fixture(scope="module")
def two_rank_runs(request, tmp_path_factory, students, data):
    """The selected two-rank tests of this file in one spawn, after the one-process runs they compare
    with (which build the data the ranks read). {node name: (one-process result, per-rank results)}."""
    from dense_cp_workers import sft_worker
    from rl_workers import grpo_worker
    from spawn_cases import run_cases, selected_params

    root = tmp_path_factory.mktemp("dense_cp_runs")
    plans = {  # test: (its one-process run or None, its two-rank case)
        "test_cp2_equals_one_process": lambda: (None, (dense_cp_worker, _cases(TWO_RANKS, students, data))),
        "test_sft_run_under_cp2_equals_one_process": lambda: (
            sft_worker(0, 1, _sft_overrides(root / "sft", "one", 1)),
            (sft_worker, (_sft_overrides(root / "sft", "cp2", 2),))),
        "test_grpo_step_of_a_student_under_cp2_equals_one_process": lambda: (
            grpo_worker(0, 1, _grpo_overrides(root / "grpo", "one", 1))["rows"],
            (grpo_worker, (_grpo_overrides(root / "grpo", "cp2", 2),))),
    }
    one, cases = {}, {}
    for test, plan in plans.items():
        for node in selected_params(request, test):
            one[node], cases[node] = plan()
    runs = run_cases(2, cases)
    return {node: (one[node], runs[node]) for node in cases}


def test_packed_reference_differs_from_causal(reference):
    """The packed layouts test something: documents change the logits."""
    for kind in (*STUDENTS, "qwen3"):
        assert (reference[(kind, True)]["logits"] - reference[(kind, False)]["logits"]).abs().max() > 1e-2


def test_cp2_equals_one_process(request, two_rank_runs, reference):
    _check(two_rank_runs[request.node.name][1], TWO_RANKS, reference)


@pytest.mark.slow
def test_cp2_composed_with_tp_sp_pp_dp(students, data, reference):
    _check(run_ranks(dense_cp_worker, 4, *_cases(FOUR_RANKS, students, data)), FOUR_RANKS, reference)


def _sft_overrides(tmp_path, name: str, cp: int) -> list[str]:
    return [f"train.run_dir={tmp_path / name}", f"data.cache_dir={tmp_path / 'data'}", "train.steps=3",
            f"parallel.cp={cp}", "data.seq_length=64", "data.synthetic_docs=200"]


@pytest.mark.slow
def test_sft_run_under_cp2_equals_one_process(request, two_rank_runs):
    """The training run users start (`r1mega sft` of a student with parallel.cp=2): loss and gradient
    norm of every step equal one process (they were exactly 2x before the dense forward split rows)."""
    one, per_rank = two_rank_runs[request.node.name]
    two = per_rank[0]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)


def _verify(nproc: int, *args: str) -> tuple[float, float]:
    """(max |logit diff|, |loss diff|) of `r1mega verify-hf` on nproc ranks started with torchrun's
    environment (tests/spawn_cases.py); exit status 0."""
    import re

    from spawn_cases import cli_on_ranks

    status, out = cli_on_ranks(nproc, "verify-hf", *args)
    assert status == 0, out[-3000:]
    assert "gradients: worst" in out and "PASS" in out
    loss_diff = float(re.search(r"loss_diff=(\S+)", out).group(1))
    return float(re.fullmatch(r"max_abs_logit_diff=(\S+)", out.strip().splitlines()[-1]).group(1)), loss_diff


@pytest.mark.slow
def test_verify_hf_cp2_on_students(students):
    """`verify-hf --cp 2` on a student matches transformers (logits, loss, gradients): Qwen2 alone,
    Llama with 3 KV heads composed with TP2+SP."""
    for nproc, args in ((2, ("--hf-dir", students["qwen2"], "--cp", "2")),
                        (4, ("--hf-dir", students["llama"], "--cp", "2", "--tp", "2", "--sp"))):
        logit_diff, loss_diff = _verify(nproc, *args)
        assert logit_diff < 1e-4 and loss_diff < 1e-5, (args, logit_diff, loss_diff)


def _grpo_overrides(tmp_path, name: str, cp: int) -> list[str]:
    student = ["student.vocab_size=384", "student.hidden_size=32", "student.intermediate_size=64",
               "student.num_layers=2", "student.num_heads=4", "student.num_kv_heads=2",
               "student.tie_word_embeddings=true"]
    # the language reward varies over random outputs, so advantages (and gradients) are not zero
    return [f"train.run_dir={tmp_path / name}", f"data.cache_dir={tmp_path / 'data'}", "train.steps=2",
            f"parallel.cp={cp}", "rl.group_size=4", "rl.prompts_per_step=4", "rl.kl_coef=0.01",
            "rl.updates_per_rollout=2", "rl.rewards=[language]", "data.micro_batch_size=8",
            "data.global_batch_size=8", "data.synthetic_docs=300", *student]


@pytest.mark.slow
def test_grpo_step_of_a_student_under_cp2_equals_one_process(request, two_rank_runs):
    """GRPO on a student with parallel.cp=2: every cp rank of a DP rank decodes the same rollouts in
    full (the cached decode is not split, as for MLA; noise keyed by problem and sample), then the
    training forward splits rows. Rewards, loss, KL and gradient norm equal one process."""
    one, per_rank = two_rank_runs[request.node.name]
    two = per_rank[0]["rows"]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(one, two):
        assert a["grad_norm"] > 0 and a["zero_advantage_frac"] < 1, a
        for key in ("reward", "response_len", "zero_advantage_frac"):
            assert b[key] == a[key], (key, a, b)
        for key in ("loss", "kl", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (key, a, b)
        assert b["logprob_gap_max"] < 1e-4


@pytest.mark.parametrize("config", ["configs/tiny/distill_student.yaml", "configs/tiny/pretrain.yaml"])
def test_dry_run_and_plan_refuse_what_the_run_refuses(config, capsys):
    """seq_length 90 does not split into 2 x cp = 4 zigzag chunks: the run refuses it, and so do
    `--dry-run` and `r1mega plan` (they said "fits"), for a student and for DeepSeek-V3; 96 passes."""
    import os

    from r1mega import cli
    from r1mega.config import ConfigError, load_config, validate_training

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), config)
    kind = "sft" if "student" in config else "pretrain"
    with pytest.raises(ConfigError, match="data.seq_length"):  # what the run's own validation says
        validate_training(load_config(path, ["parallel.cp=2", "data.seq_length=90"]), 2)
    assert cli.main([kind, "--config", path, "--dry-run", "parallel.cp=2", "data.seq_length=90"]) == 2
    assert "'data.seq_length': context parallel needs seq_length 90 divisible by 2 x cp = 4" in capsys.readouterr().err
    assert cli.main(["plan", "--config", path, "--cp", "2", "--seq-length", "90"]) == 2
    assert "'--seq-length': 90 is not divisible by 2 x cp = 4" in capsys.readouterr().err
    assert cli.main(["plan", "--config", path, "--cp", "2", "--tp", "2", "--sp", "--seq-length", "100"]) == 2
    assert "2 x cp x tp (sequence parallel) = 8" in capsys.readouterr().err
    assert cli.main([kind, "--config", path, "--dry-run", "parallel.cp=2", "data.seq_length=96"]) == 0
    assert "cp=2" in capsys.readouterr().out


def test_student_plan_counts_context_parallel():
    """The student planner splits a GPU's tokens over cp and adds the gathered K/V and their traffic."""
    import os

    from r1mega.config import ParallelConfig, load_config
    from r1mega.plan import plan_for

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "model", "students", "qwen2.5_32b.yaml")
    plans = {}
    for cp in (1, 4):
        cfg = load_config(path)
        cfg.parallel = ParallelConfig(tp=8, sp=True, pp=4, cp=cp, dp=16 // cp)
        plans[cp] = plan_for(cfg, 512, 1, 32768, 64)
    one, four = plans[1], plans[4]
    assert four.layout["cp"] == 4 and one.comm["cp"] == 0 < four.comm["cp"]
    assert four.memory["weights"] == one.memory["weights"]
    assert four.memory["optimizer"] == pytest.approx(one.memory["optimizer"])  # ZeRO over dp x cp: same 16 replicas
    assert 0.25 < four.memory["activations"] / one.memory["activations"] < 0.3  # a quarter of the tokens, + K/V
