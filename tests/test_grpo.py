"""The GRPO loop on the same sharded weights, end to end on 2 ranks (TP2 with EP2 folded over it,
PP2, and CP2): rollout and training log-probs agree, with and without routing replay, and the KL/clip
machinery runs."""
import pytest

from rl_workers import grpo_worker


@pytest.fixture(scope="module")
def layout_runs(request, tmp_path_factory):
    """The selected layout cases below in one spawn of two ranks, each in its own run directory."""
    from spawn_cases import run_cases, selected_params

    root = tmp_path_factory.mktemp("grpo_layouts")
    cases = selected_params(request, "test_grpo_runs_and_logprobs_agree")
    return run_cases(2, {node: (grpo_worker, (_layout_overrides(root / f"case{i}", p["layout"], p["replay"]),))
                         for i, (node, p) in enumerate(cases.items())})


def _layout_overrides(tmp_path, layout, replay):
    return [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", "train.steps=2", *layout,
            "rl.group_size=4", "rl.prompts_per_step=4", "rl.kl_coef=0.01",
            "rl.updates_per_rollout=2", "rl.clip_high=0.28", f"rl.routing_replay={str(replay).lower()}",
            "data.micro_batch_size=8", "data.global_batch_size=8", "data.synthetic_docs=300"]


@pytest.mark.parametrize("layout, replay", [
    (["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"], False),
    (["parallel.tp=2", "parallel.ep=2", "parallel.etp=1"], True),
    (["parallel.pp=2"], True),
    pytest.param(["parallel.cp=2"], True, marks=pytest.mark.slow),  # CP training forward, rows of any length
])
def test_grpo_runs_and_logprobs_agree(request, layout_runs, layout, replay):
    per_rank = layout_runs[request.node.name]
    rows = per_rank[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # the rollout's own log-probs and the training forward's, same tokens, same shards
        assert r["logprob_gap_max"] < 1e-4, r
        assert r["response_len"] > 0 and r["rollout_kv_cache_bytes"] > 0
        assert r["kl"] >= 0
    assert per_rank[0]["before"] == per_rank[1]["before"]  # every rank reports the same evaluation


# ---- GRPO on a user's own prompts, tokenizer and model (r1mega-convert import + r1mega grpo) ----

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from r1mega.data.prompts import R1_ZERO  # noqa: E402
from rl_data import CODE, MATH, imported_checkpoint, write_jsonl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE = os.path.join(ROOT, "configs", "stage", "r1_zero.yaml")


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("user"))
    return {"ckpt": imported_checkpoint(root), "math": write_jsonl(f"{root}/math.jsonl", MATH),
            "code": write_jsonl(f"{root}/code.jsonl", CODE)}


def grpo_cli(run_dir, data, prompts, rewards, nproc=1, extra=()):
    """The stage config as written, given a model, prompts and small sizes."""
    args = ["grpo", "--config", STAGE, f"train.load={data['ckpt']}",
            f"rl.prompts=[{data[prompts]}]", f"rl.rewards=[{rewards}]", f"train.run_dir={run_dir}",
            "train.dtype=float32", "rl.group_size=4", "rl.prompts_per_step=2", "rl.minibatches=2",
            "rl.max_new_tokens=8", "data.micro_batch_size=4", "data.global_batch_size=8", "train.steps=2",
            "optim.lr=1e-2", "optim.min_lr=1e-2", "rl.kl_coef=0.01", "rl.language=en", *extra]
    if nproc == 1:  # main() in this process; the layouts below start the command under torchrun
        from cli_in_process import run_main
        from r1mega.cli import main

        res = run_main(main, args, cwd=ROOT)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "r1mega.cli", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    samples = [json.loads(line) for line in open(os.path.join(run_dir, "rollouts.jsonl"))]
    return rows, samples


def test_r1_zero_on_user_math_prompts_one_process_with_resume(tmp_path, user_data):
    run = str(tmp_path / "run")
    rows, samples = grpo_cli(run, user_data, "math", "accuracy,format,language",
                             extra=["train.save_interval=2", "rl.max_new_tokens_schedule=[[2,6]]"])
    assert [r["step"] for r in rows] == [1, 2]
    first, second = rows
    assert first["logprob_gap_max"] < 1e-4 and first["sampler_kl"] < 1e-8  # float32: sampler == trainer
    # the first minibatch runs on the rollout's own policy (ratio 1, reference = policy); the second
    # reuses the rollout's old log-probs after one update, so the ratio moves and the clip acts
    assert first["clip_frac"] == 0 and first["kl"] < 1e-9
    assert second["clip_frac"] > 0 and second["kl"] > 0
    assert first["max_new_tokens"] == 8 and set(first) >= {"reward_accuracy", "reward_format", "reward_language"}
    # sample rollouts: the rendered R1-Zero prompt, the completion and each reward
    questions = {p["prompt"] for p in MATH}
    assert len(samples) == 4 and all(s["step"] == 1 for s in samples)
    assert all(s["prompt"] in {R1_ZERO.format(prompt=q) for q in questions} for s in samples)
    assert all(set(s["rewards"]) == {"accuracy", "format", "language"} for s in samples)
    meta = json.load(open(os.path.join(run, "checkpoints", "step_00000002", "meta.json")))
    assert meta["reference"] == os.path.join("reference", "step_00000000") and meta["prompt_position"] == 4
    # a requeue: the same command with more steps resumes; the reference is the saved one, not the
    # current policy (which would make the first minibatch's KL exactly 0); the length switch applies
    rows, samples = grpo_cli(run, user_data, "math", "accuracy,format,language",
                             extra=["train.steps=4", "rl.max_new_tokens_schedule=[[2,6]]"])
    resumed = rows[2:]
    assert [r["step"] for r in resumed] == [3, 4]
    assert resumed[0]["kl"] > 1e-6 and resumed[0]["clip_frac"] == 0
    assert resumed[0]["max_new_tokens"] == 6 and resumed[0]["response_len"] <= 6
    assert {s["step"] for s in samples} == {1, 3}


def test_resume_on_other_prompt_files_is_refused_unless_allowed(tmp_path, user_data, capsys):
    """The saved prompt position means nothing in other files: refused by key, as pretraining and SFT
    refuse other data, and continued deliberately with train.allow_data_change=true."""
    run = str(tmp_path / "run")
    grpo_cli(run, user_data, "math", "accuracy", extra=["train.steps=1", "train.save_interval=1"])
    other = dict(user_data, math=write_jsonl(str(tmp_path / "other.jsonl"), MATH[::-1]))
    from cli_in_process import run_main
    from r1mega.cli import main

    args = ["grpo", "--config", STAGE, f"train.load={user_data['ckpt']}", f"rl.prompts=[{other['math']}]",
            "rl.rewards=[accuracy]", f"train.run_dir={run}", "train.dtype=float32", "rl.group_size=4",
            "rl.prompts_per_step=2", "rl.minibatches=2", "rl.max_new_tokens=8", "data.micro_batch_size=4",
            "data.global_batch_size=8", "train.steps=2"]
    res = run_main(main, args, cwd=ROOT)
    assert res.returncode == 2 and "'rl.prompts'" in res.stderr and "train.allow_data_change=true" in res.stderr
    rows, _ = grpo_cli(run, other, "math", "accuracy", extra=["train.steps=2", "train.allow_data_change=true"])
    assert [r["step"] for r in rows] == [1, 2]  # step 1 from the first run, step 2 resumed on the other files
    # the newest checkpoint (saved on the other files) damaged: the resume falls back to step 1, saved on
    # the first files, and is refused for them as a resume from step 1 would be
    piece = os.path.join(run, "checkpoints", "step_00000002", "rank00000.safetensors")
    with open(piece, "r+b") as f:
        f.truncate(os.path.getsize(piece) - 4)
    res = run_main(main, [*args[:4], f"rl.prompts=[{other['math']}]", *args[5:-1], "train.steps=3"], cwd=ROOT)
    assert res.returncode == 2 and "'rl.prompts'" in res.stderr and "step_00000001" in res.stderr, res.stderr[-2000:]


def test_stage_configs_name_what_is_missing(tmp_path, user_data, capsys):
    from r1mega.cli import main

    for stage in ("r1_zero", "reasoning_rl", "alignment_rl"):
        config = os.path.join(ROOT, "configs", "stage", f"{stage}.yaml")
        run = [f"train.run_dir={tmp_path}/{stage}"]
        assert main(["grpo", "--config", config, *run]) == 2
        assert "'rl.prompts'" in capsys.readouterr().err
        assert main(["grpo", "--config", config, *run, f"rl.prompts=[{user_data['math']}]"]) == 2
        assert "'train.load'" in capsys.readouterr().err
    # a tokenizer with more ids than the model's embedding rows is refused by name before any weight
    # (the checkpoint's own model with fewer rows: a model section of another is named as such first)
    with open(os.path.join(user_data["ckpt"], "meta.json")) as f:
        model = json.load(f)["model_config"]
    small = tmp_path / "small.yaml"
    small.write_text(json.dumps({"model": {**model, "vocab_size": 384}}))
    stage = ["grpo", "--config", STAGE, "--config", str(small), f"train.run_dir={tmp_path}/big",
             f"train.load={user_data['ckpt']}", f"rl.prompts=[{user_data['math']}]", "rl.max_new_tokens=4"]
    assert main([*stage, "train.allow_arch_change=[vocab_size]"]) == 2
    err = capsys.readouterr().err
    assert "'data.tokenizer'" in err and "model.vocab_size=384" in err
    assert main(stage) == 2
    assert "model.vocab_size: checkpoint 640, config 384" in capsys.readouterr().err


def test_reference_is_scored_with_its_own_routing(tmp_path, user_data, monkeypatch):
    import r1mega.rl.grpo as grpo_module
    import r1mega.rl.update as update_module
    from r1mega.config import load_config

    real, seen = update_module.sequence_logprobs, []

    def spy(chunks, ps, mbs, temperature):
        seen.append(all(mb.routing is not None for mb in mbs))
        return real(chunks, ps, mbs, temperature)

    monkeypatch.setattr(update_module, "sequence_logprobs", spy)
    cfg = load_config(STAGE, [f"train.load={user_data['ckpt']}", f"rl.prompts=[{user_data['math']}]",
                              f"train.run_dir={tmp_path}/run", "train.dtype=float32", "rl.group_size=2",
                              "rl.prompts_per_step=1", "rl.minibatches=1", "rl.max_new_tokens=4", "train.steps=1",
                              "data.micro_batch_size=2", "data.global_batch_size=2", "rl.routing_replay=true"])
    grpo_module.grpo(cfg)
    assert seen == [True, False]  # old log-probs replay the rollout's experts; the reference routes itself


@pytest.mark.slow
@pytest.mark.parametrize("prompts, rewards, layout, nproc", [
    ("code", "code,format,language", ["parallel.tp=2", "parallel.ep=2"], 4),  # TP2 x EP2 (DP2)
    ("math", "accuracy,format,language", ["parallel.pp=2"], 2),
])
def test_user_prompts_under_a_layout_equal_one_process(tmp_path, user_data, prompts, rewards, layout, nproc):
    extra = ["rl.routing_replay=true"]
    one, one_samples = grpo_cli(str(tmp_path / "one"), user_data, prompts, rewards, extra=extra)
    many, many_samples = grpo_cli(str(tmp_path / "many"), user_data, prompts, rewards, nproc, extra=extra + layout)
    # the same rows draw the same noise on any layout: identical rollouts, rewards and updates
    assert [s["completion"] for s in many_samples] == [s["completion"] for s in one_samples]
    for a, b in zip(one, many):
        for key in ("reward", "response_len", "zero_advantage_frac"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        for key in ("loss", "grad_norm", "kl", "clip_frac"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key
        assert b["logprob_gap_max"] < 1e-4


def test_a_non_finite_loss_skips_the_update(tmp_path, user_data, monkeypatch):
    import torch

    import r1mega.rl.grpo as grpo_module
    import r1mega.rl.update as update_module
    from r1mega.config import load_config

    real, calls = update_module.grpo_loss, []

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the first minibatch's loss is NaN
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(update_module, "grpo_loss", poisoned)
    run = str(tmp_path / "run")
    cfg = load_config(STAGE, [f"train.load={user_data['ckpt']}", f"rl.prompts=[{user_data['math']}]",
                              "rl.rewards=[accuracy,format,language]", f"train.run_dir={run}", "train.dtype=float32",
                              "rl.group_size=4", "rl.prompts_per_step=1", "rl.minibatches=2", "rl.max_new_tokens=6",
                              "data.micro_batch_size=4", "data.global_batch_size=4", "train.steps=2", "optim.lr=1e-2"])
    torch.set_num_threads(1)
    first, second = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))] \
        if grpo_module.grpo(cfg) else []
    assert first["skipped"] and first["skipped_steps"] == 1 and not second["skipped"]
    # the weights did not move: the second minibatch still sees ratio 1 against the old log-probs
    assert second["clip_frac"] == 0 and second["kl"] < 1e-9
    meta = json.load(open(os.path.join(run, "checkpoints", "step_00000002", "meta.json")))
    assert meta["skipped_steps"] == 1 and meta["optimizer_step"] == 1


def test_fp8_runs_the_update_and_leaves_sampling_and_reference_alone(tmp_path, user_data, monkeypatch, capsys):
    """train.fp8=blockwise: rollouts and the reference are the float32 run's bit for bit; the old
    log-probs and the update's gradients move by FP8 error (non-zero, bounded)."""
    import torch

    import r1mega.rl.grpo as grpo_module
    import r1mega.rl.update as update_module
    from r1mega.config import load_config

    sample, logprobs, sync = grpo_module.sample_rollout, update_module.old_and_reference_logprobs, update_module.sync_grads

    def one_step(fp8: str) -> dict:
        seen: dict = {"grads": []}

        def sample_spy(*args, **kwargs):
            seen["scored"] = sample(*args, **kwargs)
            return seen["scored"]

        def logprobs_spy(*args, **kwargs):
            seen["old"], seen["ref"] = logprobs(*args, **kwargs)
            seen["generated"] = args[4].generated  # the batch's sampled tokens (packed rows)
            return seen["old"], seen["ref"]

        def sync_spy(chunks, *args, **kwargs):
            sync(chunks, *args, **kwargs)
            seen["grads"].append(torch.cat([p.grad.flatten() for p in chunks.parameters() if p.grad is not None]))

        monkeypatch.setattr(grpo_module, "sample_rollout", sample_spy)
        monkeypatch.setattr(update_module, "old_and_reference_logprobs", logprobs_spy)
        monkeypatch.setattr(update_module, "sync_grads", sync_spy)
        run = str(tmp_path / fp8)
        cfg = load_config(STAGE, [f"train.load={user_data['ckpt']}", f"rl.prompts=[{user_data['math']}]",
                                  "rl.rewards=[accuracy,format,language]", f"train.run_dir={run}",
                                  "train.dtype=float32", f"train.fp8={fp8}", "rl.tis=false", "rl.kl_coef=0.01",
                                  "rl.group_size=4", "rl.prompts_per_step=2", "rl.minibatches=1",
                                  "rl.max_new_tokens=8", "data.micro_batch_size=4", "data.global_batch_size=8",
                                  "train.steps=1"])
        torch.set_num_threads(1)
        grpo_module.grpo(cfg)
        seen["row"] = json.loads(open(os.path.join(run, "metrics.jsonl")).readline())
        seen["log"] = capsys.readouterr()
        return seen

    base, fp8 = one_step("none"), one_step("blockwise")
    announced = (fp8["log"].out + fp8["log"].err).count("FP8 blockwise")
    assert announced == 1 and "FP8" not in base["log"].out + base["log"].err
    # generation and the reference never see the FP8 kernels
    a, b = base["scored"], fp8["scored"]
    assert torch.equal(a.rollout.tokens, b.rollout.tokens) and a.responses == b.responses
    assert torch.equal(a.rollout.logprobs, b.rollout.logprobs) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(base["ref"], fp8["ref"])
    # the trainer's log-probs of the sampled tokens: FP8 moves them, by FP8 error (~1% here)
    mask = base["generated"]
    assert torch.equal(mask, fp8["generated"])
    old, old8 = base["old"][mask], fp8["old"][mask]
    diff = (old8 - old).abs()
    assert diff.max() > 1e-4 and diff.mean() < 0.02 * old.abs().mean(), (diff.mean(), old.abs().mean())
    assert base["row"]["logprob_gap_max"] < 1e-4 < fp8["row"]["logprob_gap_max"]
    assert base["row"]["kl"] < 1e-9 < fp8["row"]["kl"]  # the float32 reference against the FP8 policy
    # the update's gradient, every parameter's. It is a sum of per-token terms that mostly cancel
    # (zero-mean advantages in each group; the policy's own samples), so its relative error is a
    # multiple of the per-token one: measured 18%, cosine 0.98
    (g,), (g8,) = base["grads"], fp8["grads"]
    rel = float((g8 - g).norm() / g.norm())
    assert 1e-3 < rel < 0.3 and float(torch.nn.functional.cosine_similarity(g, g8, 0)) > 0.95, rel
    assert fp8["row"]["grad_norm"] == pytest.approx(base["row"]["grad_norm"], rel=0.1)
    # TIS (rollout vs trainer log-probs) is on by default once the trainer runs FP8
    fp8_cfg, plain_cfg = (load_config(STAGE, o) for o in (["train.fp8=blockwise", "train.dtype=float32"],
                                                          ["train.dtype=float32"]))
    assert update_module.use_tis(fp8_cfg.rl, fp8_cfg.train)
    assert not update_module.use_tis(plain_cfg.rl, plain_cfg.train)


def test_resume_with_another_tokenizer_or_seed_is_refused_unless_allowed(tmp_path, capsys):
    """The synthetic corpus's tokenizer depends on data.synthetic_docs (another corpus directory): a
    resume under another one encoded the prompts with other ids ('3' is another token) for a policy
    trained on the first, silently. Each checkpoint records the tokenizer's fingerprint; another is
    refused by key, and train.allow_data_change continues."""
    import os

    from r1mega.cli import main

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny",
                          "r1_zero_demo.yaml")
    base = ["grpo", "--config", config, f"data.cache_dir={tmp_path / 'data'}", f"train.run_dir={tmp_path / 'run'}",
            "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=4", "train.save_interval=1"]
    assert main([*base, "data.synthetic_docs=300", "train.steps=1"]) == 0
    capsys.readouterr()
    assert main([*base, "data.synthetic_docs=2000", "train.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "error: config error at 'data.tokenizer':" in err and "train.allow_data_change=true" in err
    assert "step_00000002" not in os.listdir(tmp_path / "run" / "checkpoints")  # nothing trained on it
    assert main([*base, "data.synthetic_docs=300", "train.steps=2"]) == 0  # the same tokenizer resumes
    assert main([*base, "data.synthetic_docs=2000", "train.steps=3", "train.allow_data_change=true"]) == 0
    # the seed orders the prompts (files) or draws them (synthetic) by position: another is refused too
    capsys.readouterr()
    assert main([*base, "data.synthetic_docs=2000", "train.steps=4", "seed=5"]) == 2
    assert "error: config error at 'seed':" in capsys.readouterr().err
