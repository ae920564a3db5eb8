"""Hostile probes of `r1mega reject-sample --samples-from GEN_DIR` on a generate run that did not
finish (killed, or still running): refused by name, nothing written, instead of an sft.jsonl and a
report.json that look complete. The directory is laid out as `r1mega generate` leaves it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_in_process import run_main
from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 2


def _record(pid: str, i: int) -> str:
    return json.dumps({"id": pid, "sample": i, "completion": "<think>1+1=2</think> A: 2", "prompt_tokens": 3,
                       "completion_tokens": 8, "finish_reason": "stop"}) + "\n"


def _generate_dir(path, done: list[str], partial: str = "", torn: bool = False, lock_pid=None):
    os.makedirs(path)
    (path / ".r1mega-owner.json").write_text(json.dumps({"command": "generate", "config_hash": None,
                                                         "run_id": "0123456789ab"}))
    (path / "meta.json").write_text(json.dumps({"prompts": "p.jsonl", "template": "raw", "samples": K,
                                                "sampling": {"samples": K}}))
    text = "".join(_record(p, i) for p in done for i in range(K))
    if partial:
        text += _record(partial, 0)
    if torn:
        text += _record(partial or "p9", 1)[:20]
    (path / "shard-00000.jsonl").write_text(text)
    if lock_pid is not None:
        (path / ".r1mega.lock").write_text(json.dumps({"pid": lock_pid, "host": os.uname().nodename,
                                                       "command": "generate"}))
    return path


def _run(tmp_path, gen):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "1+1=", "answer": "2"}) + "\n" for i in range(4)))
    # `r1mega reject-sample ...` in this process (what it refuses and writes, not the interpreter)
    return run_main(main, ["reject-sample", "--samples-from", gen, "--prompts", prompts, "--out", tmp_path / "sft",
                           "--keep", "1"])


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("state", ["killed (lock left, later problems missing)", "running (lock held)",
                                   "torn last line", "a problem short of its samples"])
def test_an_unfinished_generate_run_is_not_filtered(tmp_path, request, state):
    if state.startswith("killed"):
        gen = _generate_dir(tmp_path / "gen", ["p0", "p1"], lock_pid=_dead_pid())
        named = ".r1mega.lock"
    elif state.startswith("running"):  # another live process holds the lock (the command runs in this one)
        holder = subprocess.Popen(["sleep", "300"])
        request.addfinalizer(lambda: (holder.kill(), holder.wait()))
        gen = _generate_dir(tmp_path / "gen", ["p0", "p1"], lock_pid=holder.pid)
        named = ".r1mega.lock"
    elif state == "torn last line":
        gen = _generate_dir(tmp_path / "gen", ["p0", "p1", "p2"], partial="p3", torn=True)
        named = "shard-00000.jsonl"
    else:
        gen = _generate_dir(tmp_path / "gen", ["p0", "p1", "p2"], partial="p3")
        named = "'p3'"
    before = {n: (gen / n).read_bytes() for n in os.listdir(gen)}
    r = _run(tmp_path, gen)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert named in r.stderr and "--samples-from" in r.stderr
    assert not (tmp_path / "sft").exists()
    assert {n: (gen / n).read_bytes() for n in os.listdir(gen)} == before


def test_a_finished_generate_run_is_filtered(tmp_path):
    gen = _generate_dir(tmp_path / "gen", ["p0", "p1", "p2", "p3"])
    r = _run(tmp_path, gen)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "sft" / "sft.jsonl").read_text().splitlines()
    assert len(rows) == 4
    assert json.loads((tmp_path / "sft" / "report.json").read_text())["total"] == 4 * K
