"""`r1mega eval --data all.jsonl other.jsonl`: the table of several benchmarks gets a total row named
"all", which replaced the row of the benchmark named all in <out>/summary.json and summary.md (its
numbers silently gone from the table). A benchmark whose name is that of the total row is refused
by name before anything is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval(tmp_path, *names):
    paths = []
    for name in names:
        p = tmp_path / f"{name}.jsonl"
        p.write_text(json.dumps({"id": "a", "prompt": "1+1=", "answer": "2"}) + "\n")
        paths.append(str(p))
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("R1MEGA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "r1mega.cli", "eval", "--data", *paths, "--model",
                           str(tmp_path / "no_model"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_benchmark_named_like_the_total_row_is_refused(tmp_path):
    r = _eval(tmp_path, "all", "math")
    assert r.returncode == 2 and "'--data'" in r.stderr and "all.jsonl" in r.stderr, r.stderr
    assert "total" in r.stderr and not (tmp_path / "out").exists()
