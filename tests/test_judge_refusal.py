"""Probe: where the sandbox's isolation cannot be set up, every command that would run generated
code refuses up front with one `error:` line naming why (exit 2), never a traceback after hours of
sampling, and never a hint at a key the command does not read (`r1mega eval` said "set
rl.unsafe_code_sandbox=true", which eval ignores)."""
import json

import pytest

from r1mega.cli import main
from r1mega.errors import run_command
from r1mega.sandbox import isolation

REASON = "sandbox setup failed: PermissionError: unshare: Operation not permitted (probe)"


@pytest.fixture
def no_isolation(monkeypatch):
    monkeypatch.setattr(isolation, "isolation_problem", lambda: REASON)
    monkeypatch.setitem(isolation._policy, "unsafe", False)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


CODE = {"id": "c1", "prompt": "Write add(a, b).", "tests": "assert add(1, 2) == 3"}
MATH = {"id": "m1", "prompt": "1+1?", "answer": "2"}


def test_sandbox_unavailable_is_a_user_error(no_isolation, capsys):
    assert run_command(lambda: isolation.require_isolation()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to run generated code") and REASON in err and "rl.unsafe_code_sandbox" in err


def test_eval_of_a_code_benchmark_refuses_by_name_before_scoring(no_isolation, tmp_path, capsys):
    data = _write(tmp_path / "bench.jsonl", [CODE, MATH])
    comps = _write(tmp_path / "comps.jsonl", [
        {"id": "c1", "completion": "<think>t</think>\n```python\ndef add(a, b):\n    return a + b\n```"},
        {"id": "m1", "completion": "\\boxed{2}"}])
    out = tmp_path / "ev"
    assert main(["eval", "--data", data, "--completions", comps, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: refusing to run generated code" in err and REASON in err
    assert "rl.unsafe_code_sandbox" not in err  # eval has no such key
    assert not out.exists()  # refused before claiming the output directory


def test_reject_sample_of_code_prompts_refuses_before_loading_a_model(no_isolation, tmp_path, capsys):
    prompts = _write(tmp_path / "prompts.jsonl", [CODE])
    out = tmp_path / "rs"
    assert main(["reject-sample", "--prompts", prompts, "--out", str(out), "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "error: refusing to run generated code" in err and REASON in err and "rl.unsafe_code_sandbox" not in err
    assert not out.exists()


def test_math_only_benchmarks_need_no_sandbox(no_isolation, tmp_path):
    data = _write(tmp_path / "bench.jsonl", [MATH])
    comps = _write(tmp_path / "comps.jsonl", [{"id": "m1", "completion": "\\boxed{2}"}])
    assert main(["eval", "--data", data, "--completions", comps, "--out", str(tmp_path / "ev")]) == 0
