"""Hostile probes of train.load: a wrong one is named before anything is built or written (the
synthetic corpus included), and a damaged meta.json in it is named, never a traceback."""
from __future__ import annotations

import os

import pytest

from cli_in_process import run_main
from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(cwd, *args):
    return run_main(main, args, cwd=cwd)  # `r1mega ARGS` in this process (the refusals, not the interpreter)


@pytest.mark.parametrize("command,config", [("pretrain", "configs/tiny/pretrain.yaml"),
                                            ("grpo", "configs/tiny/r1_zero_demo.yaml")])
def test_missing_train_load_creates_nothing(tmp_path, command, config):
    """Before: the synthetic corpus (runs/data/...) was built under the working directory first."""
    r = _cli(tmp_path, command, "--config", os.path.join(ROOT, config), "train.load=no_such_ckpt",
             "train.run_dir=run")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "train.load" in r.stderr and "no_such_ckpt" in r.stderr
    assert os.listdir(tmp_path) == []


def test_damaged_meta_json_in_train_load_is_named(tmp_path):
    """A stage config (model left at its defaults, so the model comes from train.load): a meta.json
    that is not JSON was a JSONDecodeError traceback (exit 1)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text("{half written")
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    r = _cli(tmp_path, "sft", "--config", os.path.join(ROOT, "configs/stage/cold_start_sft.yaml"),
             f"train.load={ckpt}", "train.run_dir=run", f"data.paths=[{chats}]")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(ckpt / "meta.json") in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["chats.jsonl", "ckpt"]


@pytest.mark.parametrize("command,config", [("pretrain", "configs/tiny/pretrain.yaml"),
                                            ("grpo", "configs/tiny/r1_zero_demo.yaml")])
def test_a_foreign_run_dir_is_refused_before_anything_is_built(tmp_path, command, config):
    """train.run_dir holding a user's file: refused by name, the file kept, and nothing else written
    (before: the synthetic corpus was built under the working directory, then the run refused)."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    r = _cli(tmp_path, command, "--config", os.path.join(ROOT, config), f"train.run_dir={user}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "train.run_dir" in r.stderr and "notes.txt" in r.stderr
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(user) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "keep me"
