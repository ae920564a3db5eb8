"""`r1mega eval --data all.jsonl other.jsonl`: the table of several benchmarks gets a total row named
"all", which replaced the row of the benchmark named all in <out>/summary.json and summary.md (its
numbers silently gone from the table). A benchmark whose name is that of the total row is refused
by name before anything is loaded."""
from __future__ import annotations

import json

from cli_in_process import run_main
from r1mega.cli import main


def _eval(tmp_path, *names):
    paths = []
    for name in names:
        p = tmp_path / f"{name}.jsonl"
        p.write_text(json.dumps({"id": "a", "prompt": "1+1=", "answer": "2"}) + "\n")
        paths.append(str(p))
    return run_main(main, ["eval", "--data", *paths, "--model", tmp_path / "no_model", "--out", tmp_path / "out"])


def test_a_benchmark_named_like_the_total_row_is_refused(tmp_path):
    r = _eval(tmp_path, "all", "math")
    assert r.returncode == 2 and "'--data'" in r.stderr and "all.jsonl" in r.stderr, r.stderr
    assert "total" in r.stderr and not (tmp_path / "out").exists()
