"""`r1mega reject-sample --samples-from GEN_DIR` on a generate run that stopped early without leaving
its lock: Ctrl-C (KeyboardInterrupt) and any Python exception (an out-of-memory error, a bad record
met later) release the lock at exit, and the shards then hold only the problems finished so far,
each complete. Filtering that directory wrote an sft.jsonl and a report.json that looked complete
(kept 0/176 samples of 400 problems after a Ctrl-C at 44). A prompt of --prompts with no samples is
now refused by name, unless the generate run recorded it as dropped for its length
(--drop-long-prompts, `dropped_long_prompts` in meta.json)."""
from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 2


def _generate_dir(path, done: list[str], dropped=None):
    """A directory as `r1mega generate` leaves it after Ctrl-C: marker, meta.json, whole problems, no lock."""
    os.makedirs(path)
    (path / ".r1mega-owner.json").write_text(json.dumps({"command": "generate", "config_hash": None,
                                                         "run_id": "0123456789ab"}))
    meta = {"prompts": "p.jsonl", "template": "raw", "samples": K, "sampling": {"samples": K}}
    if dropped is not None:
        meta["dropped_long_prompts"] = dropped
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "shard-00000.jsonl").write_text("".join(
        json.dumps({"id": p, "sample": i, "completion": "<think>1+1=2</think> A: 2", "prompt_tokens": 3,
                    "completion_tokens": 8, "finish_reason": "stop"}) + "\n" for p in done for i in range(K)))
    return path


def _reject(tmp_path, gen):
    """`r1mega reject-sample --samples-from GEN` over prompts p0..p3 (the reject-from probes' runner)."""
    from test_tools_reject_from import _run

    return _run(tmp_path, gen)


def test_an_interrupted_generate_without_its_lock_is_not_filtered(tmp_path):
    gen = _generate_dir(tmp_path / "gen", ["p0", "p1"])  # p2, p3 never sampled
    r = _reject(tmp_path, gen)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error:" in r.stderr and "'p2'" in r.stderr and "2 of 4" in r.stderr, r.stderr
    assert not (tmp_path / "sft" / "sft.jsonl").exists() and not (tmp_path / "sft" / "report.json").exists()


def test_prompts_the_generate_run_dropped_for_length_are_not_missing(tmp_path):
    gen = _generate_dir(tmp_path / "gen", ["p0", "p1", "p3"], dropped=["p2"])
    r = _reject(tmp_path, gen)
    assert r.returncode == 0, r.stdout + r.stderr
    # the dropped prompt was never sampled: not a problem with nothing kept, counted apart
    assert "kept=3 total=6 problems_with_kept=3 problems=3 dropped_long_prompts=1" in r.stdout
    report = json.loads((tmp_path / "sft" / "report.json").read_text())
    assert (report["problems"], report["problems_with_kept"], report["dropped_long_prompts"]) == (3, 3, 1)


def test_a_finished_generate_directory_is_filtered(tmp_path):
    gen = _generate_dir(tmp_path / "gen", ["p0", "p1", "p2", "p3"])
    r = _reject(tmp_path, gen)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept=4 total=8 problems_with_kept=4 problems=4" in r.stdout


def test_generate_records_the_prompts_it_drops_for_length(tmp_path):
    """The store's meta.json names what --drop-long-prompts skipped, also when a resume drops more."""
    from r1mega.generation.store import SampleStore

    out = str(tmp_path / "gen")
    store = SampleStore(out, K, {"prompts": "p.jsonl", "dropped_long_prompts": ["a"]})
    store.close()
    store = SampleStore(out, K, {"prompts": "p.jsonl", "dropped_long_prompts": ["a", "b"]})
    store.close()
    with open(os.path.join(out, "meta.json")) as f:
        assert json.load(f)["dropped_long_prompts"] == ["a", "b"]
