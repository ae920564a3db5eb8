"""Probes of the command line as a user runs it: each a bug found by trying the commands, kept as a
test (tiny models, in-process where the command allows)."""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))


def _imported_qwen3(root: str) -> str:
    """A tiny random Qwen3 (head_dim != hidden/heads, tied embeddings) saved as Hugging Face does,
    with a tokenizer beside it, imported by r1mega-convert. Returns the checkpoint dir."""
    import transformers

    from rl_data import write_tokenizer
    from tools.convert import do_import

    hf_dir, out = os.path.join(root, "hf"), os.path.join(root, "ckpt")
    cfg = transformers.Qwen3Config(vocab_size=640, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(hf_dir)
    write_tokenizer(hf_dir)
    do_import(hf_dir, out, dtype="float32")
    return out


def test_generate_from_an_imported_checkpoint_uses_the_tokenizer_beside_it(tmp_path):
    """`r1mega-convert import` copies the tokenizer beside the weights and the stage configs use it
    from train.load; `generate --model CKPT` must too (it said "no tokenizer")."""
    from r1mega.cli import main
    from rl_data import MATH, write_jsonl

    ckpt = _imported_qwen3(str(tmp_path))
    assert os.path.isfile(os.path.join(ckpt, "tokenizer.json"))
    prompts = write_jsonl(str(tmp_path / "math.jsonl"), MATH[:2])
    out = tmp_path / "gen"
    rc = main(["generate", "--model", ckpt, "--prompts", prompts, "--out", str(out), "--max-new-tokens", "3",
               "--samples", "1"])
    assert rc in (0, None)
    rows = [json.loads(line) for line in (out / "shard-00000.jsonl").read_text().splitlines()]
    assert len(rows) == 2


def test_pipeline_rerun_with_a_changed_finished_stage_is_refused(tmp_path, capsys):
    """A finished stage whose options were edited was "done earlier, skipped" and its old numbers
    reported as the new stage's: the rerun must name the stage and refuse (exit 2), changing nothing."""
    from r1mega.cli import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "pipe"

    def write(steps: int) -> str:
        path = tmp_path / "pipe.yaml"
        path.write_text(
            f"model_config: {root}/configs/tiny/r1_zero_demo.yaml\nout: {out}\n"
            "eval: {samples: 1, temperature: 0.6, top_p: 0.95, max_new_tokens: 2, template: raw, stop: [\"\\n\"]}\n"
            f"stages:\n  - {{name: base, kind: pretrain, overrides: [train.steps={steps}, data.global_batch_size=4, "
            "data.micro_batch_size=4]}\n")
        return str(path)

    assert main(["pipeline", "--config", write(2)]) in (0, None)
    before = {p: (out / p).read_bytes() for p in ("base/DONE", "table.json")}
    assert main(["pipeline", "--config", write(2)]) in (0, None)  # unchanged: skipped, as before
    capsys.readouterr()
    assert main(["pipeline", "--config", write(3)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "base" in err, err
    assert {p: (out / p).read_bytes() for p in before} == before


def test_resume_with_train_load_of_another_model_says_so(tmp_path, capsys):
    """A run resumes from its own checkpoint whatever train.load says (a requeued job continues);
    a rerun whose train.load names another model (here another family) ran on silently."""
    from r1mega.config import load_config
    from r1mega.train.setup import model_from_checkpoint
    from rl_data import imported_checkpoint

    own = _imported_qwen3(str(tmp_path / "q"))
    other = imported_checkpoint(str(tmp_path / "d"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "stage", "r1_zero.yaml"), [f"train.load={other}"])
    cfg, family = model_from_checkpoint(cfg, own)
    assert family.name == "dense"  # the run's own model is resumed
    err = capsys.readouterr().err
    assert "warning: train.load=" in err and other in err and own in err, err
    cfg = load_config(os.path.join(root, "configs", "stage", "r1_zero.yaml"), [f"train.load={own}"])
    model_from_checkpoint(cfg, own)
    assert "warning" not in capsys.readouterr().err


def test_a_killed_pipeline_leaves_no_stage_running(tmp_path):
    """kill -9 of `r1mega pipeline` mid-stage left the stage's process running (parent 1), writing
    <out> while a rerun took the directory over."""
    import signal
    import subprocess
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(f"model_config: {root}/configs/tiny/r1_zero_demo.yaml\nout: {tmp_path / 'out'}\n"
                   "stages:\n  - {name: base, kind: pretrain, overrides: [train.steps=100000, train.log_interval=100000]}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    proc = subprocess.Popen([sys.executable, "-m", "r1mega.cli", "pipeline", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children() -> list[int]:
        kids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid:
                        kids.append(int(pid))
            except (OSError, IndexError, ValueError):
                pass
        return kids

    deadline = time.time() + 60
    while not (kids := children()) and time.time() < deadline:
        time.sleep(0.2)
    assert kids, "the stage never started"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    alive = kids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and
                 open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    for k in alive:
        os.kill(k, signal.SIGKILL)
    assert not alive, f"stage processes {alive} outlived the pipeline"


def test_grpo_refuses_responses_past_the_positions_before_any_rollout():
    """rl.max_new_tokens (or a schedule value) that cannot fit after the longest prompt is named at
    start-up (it used to run ~10 minutes of rollouts before failing)."""
    import pytest

    from r1mega.errors import ConfigError
    from r1mega.rl.rollout import check_responses_fit

    class RL:
        max_new_tokens, max_new_tokens_schedule = 400, [[10, 100000]]

    with pytest.raises(ConfigError, match=r"rl.max_new_tokens_schedule\[0\].*at most 488"):
        check_responses_fit(RL, 24, 512, steps=11)
    check_responses_fit(RL, 24, 512, steps=10)  # a schedule entry the run never reaches
    RL.max_new_tokens = 600
    with pytest.raises(ConfigError, match=r"'rl.max_new_tokens'.*at most 488"):
        check_responses_fit(RL, 24, 512, steps=10)
    RL.max_new_tokens_schedule = [[0, 400]]  # the schedule replaces it from the first step
    check_responses_fit(RL, 24, 512, steps=10)
    RL.max_new_tokens, RL.max_new_tokens_schedule = 488, [[10, 400]]
    check_responses_fit(RL, 24, 512, steps=100)


def test_overrides_on_both_sides_of_an_option_are_all_read():
    """`r1mega grpo --config C train.steps=1 --dry-run model.num_layers=3`: argparse gives a positional list
    only its first run, so the override after the option ended in "unrecognized arguments"; every run of
    key=value overrides is read now, in the order written (a later one wins)."""
    from cli_in_process import run_main
    from r1mega.cli import main

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny",
                          "r1_zero_demo.yaml")
    before = run_main(main, ["grpo", "--config", config, "model.num_layers=2", "model.num_layers=3", "--dry-run"])
    split = run_main(main, ["grpo", "--config", config, "model.num_layers=2", "--dry-run", "model.num_layers=3"])
    assert before.returncode == split.returncode == 0, split.stderr
    assert split.stdout == before.stdout and "model 3 layers" in split.stdout, split.stdout[:500]
    bad = run_main(main, ["grpo", "--config", config, "--dry-run", "model.hidden_size=abc"])
    assert bad.returncode == 2 and "'model.hidden_size'" in bad.stderr, bad.stderr
    flag = run_main(main, ["grpo", "--config", config, "--dry-run", "x=1", "--bogus"])
    assert flag.returncode == 2 and "--bogus" in flag.stderr, flag.stderr
