"""Round three of the hostile probes (issue 23): output directories that hold someone else's files,
two commands on one directory, checkpoints edited after their save, and options/inputs that used to
end in tracebacks or silently wrong runs.

Every probe ends in one named `error: ...` line with exit status 2 (no traceback), or in a correct
recovery, and leaves every file it was given as it was. Most stop in validation, before a model
loads; the rest share one tiny random checkpoint and one two-step training run.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict

import pytest

from r1mega.cli import main as cli_main
from r1mega.config import ConfigError, load_config, validate_rl, validate_training
from r1mega.errors import DataError, OutputError
from r1mega.output_dir import LOCK, MARKER, claim_on_rank0, own_and_lock, release_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny", "pretrain.yaml")
STUDENT = os.path.join(REPO, "configs", "tiny", "r1_pipeline_student.yaml")


def snapshot(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def named_error(capsys, argv, run=cli_main) -> str:
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error: " in err, err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny MoE as an r1mega checkpoint, its sentencepiece tokenizer and 4 prompts."""
    from r1mega.config import Config, ModelConfig
    from r1mega.data.synthetic import pretrain_corpus
    from r1mega.data.tokenizer import train_sentencepiece
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.setup import build_chunks, init_weights

    root = tmp_path_factory.mktemp("tiny")
    tok = train_sentencepiece(pretrain_corpus(200), str(root / "tok"), 384)
    cfg = Config(model=ModelConfig(vocab_size=384, num_layers=1, n_routed_experts=4, max_position_embeddings=256))
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, 7)
    save_checkpoint(str(root / "ckpt"), 1, chunks, None, ps, {"model_config": asdict(cfg.model)})
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Q: {i}+1=", "answer": str(i + 1)}) + "\n"
                               for i in range(4)))
    return {"ckpt": str(root / "ckpt"), "tok": tok, "prompts": str(prompts), "root": root}


def gen_args(tiny, out, *extra, kind="generate", prompts=None):
    args = [kind, "--model", tiny["ckpt"], "--tokenizer", tiny["tok"], "--template", "raw",
            "--samples", "2", "--max-new-tokens", "3"]
    if kind == "eval":
        return [*args, "--data", prompts or tiny["prompts"], "--out", str(out), *extra]
    return [*args, "--prompts", prompts or tiny["prompts"], "--out", str(out), *extra]


# ---- options: refused before any model loads ------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--temperature", "nan"], "'--temperature': must be a finite number >= 0"),
    (["--temperature", "inf"], "'--temperature': must be a finite number >= 0"),
    (["--top-k", "-5"], "'--top-k': must be >= 0"),
    (["--top-p", "nan"], "'--top-p': must be in (0, 1]"),
    (["--stop="], "'--stop': an empty stop string"),
    (["--max-new-tokens", "-5"], "'--max-new-tokens': must be >= 1"),
    (["--problems-per-round", "0"], "'--problems-per-round': must be >= 1"),
    (["--seed", "-1"], "'--seed': must be >= 0"),
    (["--shard-records", "0"], "'--shard-records': must be >= 1"),
])
def test_generate_options_are_named(capsys, tiny, tmp_path, extra, words):
    assert words in named_error(capsys, gen_args(tiny, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, words", [
    (["--min-language-share", "nan"], "'--min-language-share': must be in [0, 1]"),
    (["--min-language-share", "5"], "'--min-language-share': must be in [0, 1]"),
    (["--max-paragraph-chars", "-1"], "'--max-paragraph-chars': must be >= 1"),
    (["--max-tokens", "-5"], "'--max-tokens': must be >= 0"),
    (["--samples-from", "{root}"], "'--samples-from': filters samples already made; --model would generate"),
])
def test_reject_sample_options_are_named(capsys, tiny, tmp_path, extra, words):
    extra = [a.format(root=tiny["root"]) for a in extra]
    assert words in named_error(capsys, gen_args(tiny, tmp_path / "out", *extra, kind="reject-sample"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["verify-hf", "--hf-dir", ".", "--seq-length", "0"], "'--seq-length': must be >= 1"),
    (["verify-hf", "--hf-dir", ".", "--tol", "nan"], "'--tol': must be a finite number > 0"),
    (["demo", "--pretrain-steps", "0"], "'--pretrain-steps': must be >= 1"),
    (["plan", "--config", TINY, "--search", "0"], "'--search': must be > 0"),
    (["plan", "--config", TINY, "--cp", "2", "--seq-length", "30"], "'--seq-length': 30 is not divisible by 2 x cp = 4"),
    (["plan", "--config", TINY, "--seq-length", "8192"], "exceeds the model's max_position_embeddings"),
    (["pretrain", "--config", TINY, "--dry-run", "parallel.cp=2", "data.seq_length=30"],
     "'data.seq_length': context parallel needs seq_length 30 divisible by 2 x cp = 4"),
])
def test_command_options_are_named(capsys, tmp_path, argv, words):
    assert words in named_error(capsys, argv)


@pytest.mark.parametrize("override, key, words", [
    ("rl.overlong_penalty=nan", "rl.overlong_penalty", "finite number in [0, 1e6]"),
    ("rl.overlong_penalty=-1e30", "rl.overlong_penalty", "finite number in [0, 1e6]"),
    ("rl.kl_coef=inf", "rl.kl_coef", "finite"),
])
def test_rl_keys_are_named(override, key, words):
    cfg = load_config(TINY, ["data.synthetic=addition", override])
    with pytest.raises(ConfigError) as e:
        validate_rl(validate_training(cfg, 1, needs_data=False), 1)
    assert e.value.key == key and words in str(e.value)


@pytest.mark.parametrize("override, key, words", [
    ("student.rope_theta=-1", "student.rope_theta", "must be > 0"),
    ("student.rms_norm_eps=0", "student.rms_norm_eps", "must be > 0"),
    ("student.head_dim=-2", "student.head_dim", "must be > 0 or null"),
    ("student.initializer_range=nan", "student.initializer_range", "must be >= 0"),
    ("train.fp8_block=1000000", "train.fp8_block", "must be in [1, 4096]"),
    ("train.recompute=selective", "train.recompute_modules", "a dense student has none"),
])
def test_model_keys_are_named(override, key, words):
    with pytest.raises(ConfigError) as e:
        validate_training(load_config(STUDENT, [override]), 1)
    assert e.value.key == key and words in str(e.value)


# ---- data and tokenizers ------------------------------------------------------------------------

@pytest.mark.parametrize("line, words", [
    ('{"id": "a", "prompt": "Q: 1+1=", "messages": [{"role": "user", "content": "hi"}]}',
     "has both 'prompt' and 'messages'"),
    ('{"id": "a", "prompt": "Q: \\ud800 1+1="}', "lone UTF-16 surrogate"),
    ("[" * 200_000 + "]" * 200_000, "JSON nested too deeply"),
])
def test_bad_prompt_records_are_named(capsys, tiny, tmp_path, line, words):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(line + "\n")
    err = named_error(capsys, gen_args(tiny, tmp_path / "out", prompts=str(prompts)))
    assert f"{prompts}:1: " in err and words in err


def test_tokenizer_problems_are_named(capsys, tiny, tmp_path):
    from tokenizers import Tokenizer, models

    # a tokenizer larger than the model's vocabulary (was an IndexError in generate)
    big = tmp_path / "big"
    big.mkdir()
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(500)}, unk_token="w0")).save(str(big / "tokenizer.json"))
    argv = gen_args(tiny, tmp_path / "out")
    argv[argv.index("--tokenizer") + 1] = str(big)
    assert "has 500 tokens but the model's embedding has model.vocab_size=384" in named_error(capsys, argv)
    # a malformed tokenizer_config.json, a missing tokenizer file
    (big / "tokenizer_config.json").write_text("{oops")
    assert "tokenizer_config.json: not valid JSON" in named_error(capsys, argv)
    argv[argv.index("--tokenizer") + 1] = str(tmp_path / "none.json")
    assert "cannot load a tokenizer" in named_error(capsys, argv)
    # the chat template asked for, none in the tokenizer
    argv = gen_args(tiny, tmp_path / "out", "--template", "chat")
    assert "no chat_template" in named_error(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_prompt_longer_than_the_context_is_named_or_dropped_with_a_count(capsys, tiny, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "long", "prompt": "1 " * 400}) + "\n"
                       + json.dumps({"id": "short", "prompt": "Q: 1+1="}) + "\n")
    err = named_error(capsys, gen_args(tiny, tmp_path / "out", prompts=str(prompts)))
    assert "prompt 'long' has" in err and "the model has 256 positions" in err
    # --max-new-tokens beyond what the model's positions allow (was killed for memory)
    err = named_error(capsys, gen_args(tiny, tmp_path / "out2", "--max-new-tokens", "2000000000"))
    assert "'--max-new-tokens': 2000000000 new tokens" in err and "at most" in err
    assert cli_main(gen_args(tiny, tmp_path / "out3", "--drop-long-prompts", prompts=str(prompts))) == 0
    out = capsys.readouterr().out
    assert "dropped 1 of 2 prompts longer than the model's 256 positions" in out
    lines = [json.loads(x) for x in open(tmp_path / "out3" / "shard-00000.jsonl")]
    assert sorted({r["id"] for r in lines}) == ["short"] and len(lines) == 2


def test_grpo_prompt_longer_than_the_context_is_named(tiny):
    from r1mega.data.prompts import check_prompts_fit

    problems = [{"where": "p.jsonl:1", "prompt": "short"}, {"where": "p.jsonl:2", "prompt": "x" * 11_999}]
    with pytest.raises(ConfigError, match="'rl.prompts': p.jsonl:2: prompt has 11999 tokens but the model has 4096"):
        check_prompts_fit(problems, lambda p: len(p["prompt"]), 4096)


def test_sft_with_no_learnable_token_within_seq_length_is_refused(tiny, tmp_path):
    from r1mega.data.sft import SFTData
    from r1mega.data.tokenizer import Tokenizer

    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "7 " * 200},
                                             {"role": "assistant", "content": "8"}]}) + "\n")
    with pytest.raises(DataError, match="no assistant token falls within data.seq_length=32"):
        SFTData(str(path), Tokenizer(tiny["tok"]), 32, 0)


# ---- output ownership ---------------------------------------------------------------------------

def test_generate_refuses_a_directory_holding_a_users_shard(capsys, tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-00000.jsonl").write_text('{"id": "mine", "sample": 0, "completion": "x"}\n{"torn')
    before = snapshot(out)
    err = named_error(capsys, gen_args(tiny, out))
    assert "is not empty (shard-00000.jsonl) and was not made by `r1mega generate`" in err
    assert snapshot(out) == before


@pytest.fixture(scope="module")
def generated(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "out"
    assert cli_main(gen_args(tiny, out)) == 0
    return out


def test_generate_resumes_its_own_directory_and_keeps_lost_settings_safe(capsys, tiny, generated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(generated, out)
    assert cli_main(gen_args(tiny, out)) == 0  # its own directory: a resume, nothing to do
    assert "4 of 4 problems already done" in capsys.readouterr().out
    os.remove(out / "meta.json")  # how the samples were made is now unknown: never "repair" them by today's k
    before = snapshot(out)
    argv = gen_args(tiny, out)
    argv[argv.index("--samples") + 1] = "3"
    err = named_error(capsys, argv)
    assert "holds 1 shard(s) but no meta.json" in err and snapshot(out) == before
    (out / "meta.json").write_text("{broken")
    before = snapshot(out)
    assert "meta.json: unreadable" in named_error(capsys, gen_args(tiny, out)) and snapshot(out) == before


def test_out_that_is_a_file_or_made_by_another_command(capsys, tiny, generated, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert "exists and is not a directory" in named_error(capsys, gen_args(tiny, blocker))
    assert blocker.read_text() == "keep"
    before = snapshot(generated)
    err = named_error(capsys, gen_args(tiny, generated, kind="reject-sample"))
    assert "was made by `r1mega generate`; `r1mega reject-sample` does not write into it" in err
    assert snapshot(generated) == before


def test_read_only_out_is_named(capsys, tiny, tmp_path, monkeypatch):
    import errno

    real = os.makedirs

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "makedirs", read_only)
    assert "cannot create the directory (Read-only file system)" in named_error(capsys, gen_args(tiny, tmp_path / "o"))


def test_reject_sample_never_overwrites_a_users_sft_data(capsys, tiny, generated, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sft.jsonl").write_text("my data\n")
    (out / "report.json").write_text("{}")
    before = snapshot(out)
    argv = ["reject-sample", "--samples-from", str(generated), "--prompts", tiny["prompts"], "--out", str(out)]
    assert "is not empty (report.json, sft.jsonl)" in named_error(capsys, argv)
    assert snapshot(out) == before
    # into a fresh directory it works, and a rerun rewrites only its own files
    fresh = tmp_path / "fresh"
    argv[-1] = str(fresh)
    assert cli_main(argv) == 0 and cli_main(argv) == 0
    assert json.loads((fresh / "report.json").read_text())["total"] == 8
    assert "filters changed" not in capsys.readouterr().err
    assert cli_main(argv + ["--keep", "1"]) == 0  # other filter options: rewritten, and said so by name
    assert "the filters changed since the last run (keep 4 -> 1)" in capsys.readouterr().err
    assert json.loads((fresh / "report.json").read_text())["filters"]["keep"] == 1


def test_samples_from_lines_missing_fields_are_named(capsys, tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "shard-00000.jsonl").write_text('{"id": "p0", "completion": "x"}\n')
    argv = ["reject-sample", "--samples-from", str(src), "--prompts", tiny["prompts"], "--out", str(tmp_path / "o")]
    err = named_error(capsys, argv)
    assert "shard-00000.jsonl:1: expected a sample record with 'id', an integer 'sample'" in err


def test_eval_refuses_old_samples_against_a_changed_benchmark(capsys, tiny, tmp_path):
    bench = tmp_path / "bench.jsonl"
    shutil.copy(tiny["prompts"], bench)
    out = tmp_path / "eval"
    assert cli_main(gen_args(tiny, out, kind="eval", prompts=str(bench))) == 0
    capsys.readouterr()
    bench.write_text(bench.read_text().replace('"answer": "1"', '"answer": "7"'))
    before = snapshot(out)
    err = named_error(capsys, gen_args(tiny, out, kind="eval", prompts=str(bench)))
    assert "prompts_sha256" in err and "use another --out" in err
    assert snapshot(out) == before


# ---- locks ---------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from r1mega.output_dir import own_and_lock
own_and_lock(sys.argv[1], sys.argv[2])
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder():
    procs = []

    def hold(path, command):
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), command], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_command_on_a_busy_directory_is_refused(capsys, tiny, tmp_path, holder):
    run = tmp_path / "run"
    p = holder(run, "pretrain")
    err = named_error(capsys, ["pretrain", "--config", TINY, f"train.run_dir={run}", f"data.cache_dir={tmp_path}/d",
                               "train.steps=1"])
    assert f"'train.run_dir': {run} is in use by `r1mega pretrain` (pid {p.pid} on {socket.gethostname()}" in err
    assert sorted(os.listdir(run)) == sorted([LOCK, MARKER])  # nothing written beside the holder's files
    out = tmp_path / "out"
    q = holder(out, "generate")
    assert f"is in use by `r1mega generate` (pid {q.pid}" in named_error(capsys, gen_args(tiny, out))


def test_a_stale_lock_is_taken_over_with_a_warning(capsys, tiny, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"command": "generate"}))
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": "1",
                                        "command": "generate"}))
    assert cli_main(gen_args(tiny, out)) == 0
    assert f"taking over the lock of `r1mega generate` (pid {dead.pid})" in capsys.readouterr().err
    assert not (out / LOCK).exists()  # released at the end


def lock_worker(rank: int, world: int, path: str) -> str:
    try:
        claim_on_rank0(path, "generate")
    except OutputError as e:
        return str(e)
    finally:
        release_all()
    return "ok"


def test_under_ranks_one_claims_and_every_rank_stops_when_it_fails(tmp_path):
    from spawn_cases import run_cases

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mine.txt").write_text("x")
    good = tmp_path / "good"
    res = run_cases(2, {"bad": (lock_worker, (str(bad),)), "good": (lock_worker, (str(good),))})  # one spawn, in order
    assert "is not empty (mine.txt)" in res["bad"][0] and res["bad"][1].startswith("rank 0: ")
    assert res["good"] == ["ok", "ok"]
    assert sorted(os.listdir(good)) == [MARKER]


def test_lock_and_marker_api(tmp_path):
    lock = own_and_lock(str(tmp_path / "d"), "eval")
    with pytest.raises(OutputError, match="was made by `r1mega eval`"):
        own_and_lock(str(tmp_path / "d"), "generate")
    lock.release()
    assert os.listdir(tmp_path / "d") == [MARKER]


# ---- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    assert cli_main(["pretrain", "--config", TINY, f"train.run_dir={root}/run", f"data.cache_dir={root}/data",
                     "train.steps=2", "train.save_interval=1", "data.synthetic_docs=200", "data.seq_length=32",
                     "data.global_batch_size=4", "data.micro_batch_size=4", "optim.warmup_steps=0"]) == 0
    return root


def resume(root, run):
    return cli_main(["pretrain", "--config", TINY, f"train.run_dir={run}", f"data.cache_dir={root}/data",
                     "train.steps=3", "data.synthetic_docs=200", "data.seq_length=32", "data.global_batch_size=4",
                     "data.micro_batch_size=4", "optim.warmup_steps=0"])


def _edit_meta(step_dir, **changes):
    meta = json.loads((step_dir / "meta.json").read_text())
    (step_dir / "meta.json").write_text(json.dumps({**meta, **changes}, indent=1))


@pytest.mark.parametrize("damage, named", [
    (lambda s2, s1: _edit_meta(s2, step=1), "step_00000002/meta.json: differs from what was saved"),
    (lambda s2, s1: _edit_meta(s2, consumed_samples=0), "step_00000002/meta.json: differs"),
    (lambda s2, s1: _edit_meta(s2, optimizer_step=7), "step_00000002/meta.json: differs"),
    (lambda s2, s1: [shutil.copy(s1 / f, s2 / f) for f in ("rank00000.json", "rank00000.safetensors")],
     "step_00000002/rank00000.json: differs"),
    (lambda s2, s1: os.remove(s2 / "manifest.json"), "manifest.json: missing, though meta.json says"),
])
def test_checkpoint_failing_its_manifest_falls_back(capsys, base_run, tmp_path, damage, named):
    run = tmp_path / "run"
    shutil.copytree(base_run / "run", run)
    ck = run / "checkpoints"
    damage(ck / "step_00000002", ck / "step_00000001")
    assert resume(base_run, run) == 0
    out, err = capsys.readouterr()
    assert named in err and "falling back to the previous one" in err
    assert f"resumed from {ck / 'step_00000001'} at step 1" in out


def test_grpo_resume_with_other_prompt_files_is_refused(tmp_path):
    from r1mega.data.jsonl import jsonl_digest
    from r1mega.data.prompts import check_same_prompts

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "x", "answer": "1"}\n')
    b.write_text('{"prompt": "y", "answer": "2"}\n')
    meta = {"prompts_sha256": jsonl_digest([str(a)])}
    check_same_prompts(meta, [str(a)], "CKPT")
    with pytest.raises(ConfigError, match="'rl.prompts': CKPT was saved at a position in other prompt files"):
        check_same_prompts(meta, [str(b)], "CKPT")


def test_failed_save_of_any_kind_is_named(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import r1mega.train.checkpoint as ckpt
    from r1mega.config import Config
    from r1mega.errors import CheckpointError
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.setup import build_chunks

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(File too large)")

    monkeypatch.setattr(ckpt, "save_file", full)
    chunks = build_chunks(Config(), single_process_state())
    with pytest.raises(CheckpointError, match="rank00000.safetensors failed .*File too large.*was not saved"):
        ckpt.save_checkpoint(str(tmp_path / "c"), 1, chunks, None, single_process_state(), {})
    assert not os.path.exists(tmp_path / "c" / "latest")


def test_failed_export_write_is_named(tiny, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import tools.convert as convert

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(File too large)")

    monkeypatch.setattr(convert, "save_file", full)
    with pytest.raises(convert.ConvertError, match="model-00000.safetensors failed .*File too large.*nothing was"):
        convert.do_export(os.path.join(tiny["ckpt"], "step_00000001"), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists() and os.listdir(tmp_path) == []


# ---- pipeline --------------------------------------------------------------------------------------

def _pipeline(tmp_path, mutate) -> str:
    import yaml

    cfg = yaml.safe_load(open(os.path.join(REPO, "configs", "tiny", "r1_pipeline.yaml")))
    mutate(cfg)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("mutate, words", [
    (lambda c: c.update(stages=["pretrain"]), "'stages[0]': expected a mapping, got str"),
    (lambda c: c["stages"][0].update(overrides="train.steps=5"), "'stages[0].overrides': expected a list"),
    (lambda c: c["stages"][1].update(samples="eight"), "'stages[1].samples': expected an integer"),
    (lambda c: c.update(eval={"samples": 0}), "'eval.samples': must be >= 1"),
    (lambda c: c["stages"][-1].setdefault("overrides", []).append("optim.lr=nan"), "optim.lr"),
])
def test_pipeline_is_checked_before_the_first_stage(capsys, tmp_path, mutate, words):
    path = _pipeline(tmp_path, mutate)
    err = named_error(capsys, ["pipeline", "--config", path, "--out", str(tmp_path / "out")])
    assert words in err and not (tmp_path / "out").exists()


def test_pipeline_removes_only_its_own_temporary_weights(tiny, tmp_path):
    from r1mega.recipe import Runner, load_pipeline
    from r1mega.train.checkpoint import load_checkpoint  # noqa: F401  (the copy must verify)

    runner = Runner(load_pipeline(os.path.join(REPO, "configs", "tiny", "r1_pipeline.yaml")), str(tmp_path), 1)
    ckpts = tmp_path / "base" / "run" / "checkpoints"
    shutil.copytree(tiny["ckpt"], ckpts)  # a checkpoints root: step_00000001 and latest
    foreign = tmp_path / "base" / "weights.tmp"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="weights.tmp exists and was not made by `r1mega pipeline`"):
        runner.weights("base")
    assert (foreign / "notes.txt").read_text() == "mine"
    shutil.rmtree(foreign)
    dst = runner.weights("base")
    from r1mega.train.checkpoint import read_meta, verify_manifest

    verify_manifest(dst, read_meta(dst))  # the weights-only copy carries its own manifest


# ---- conversion ------------------------------------------------------------------------------------

def test_convert_import_refuses_what_r1mega_cannot_load(capsys, tmp_path):
    from tiny_hf import make_hf_model
    from tools.convert import main as convert_main

    hf = tmp_path / "hf"
    make_hf_model("DeepseekV3").save_pretrained(hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "n_group": 3, "topk_group": 1}))
    err = named_error(capsys, ["import", "--hf-dir", str(hf), "--out", str(tmp_path / "out")], convert_main)
    assert "model.n_group" in err and not (tmp_path / "out").exists()
    (hf / "config.json").write_text(json.dumps(config), encoding="utf-16")
    err = named_error(capsys, ["import", "--hf-dir", str(hf), "--out", str(tmp_path / "out")], convert_main)
    assert "not UTF-8 text" in err and not (tmp_path / "out").exists()
