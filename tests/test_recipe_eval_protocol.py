"""`r1mega pipeline` rerun with other `eval:` settings (the protocol a rerun may change: finished
stages stay valid). The held-out evaluation was reused whenever its summary.json existed: after
`eval.temperature` 0.6 -> 1.0 the table reported the 0.6 numbers as the new protocol's, and after
`eval.samples` 2 -> 3 the run ended in a traceback (KeyError 'cons@3'). Each protocol now has its own
evaluation directory, so a changed protocol is evaluated anew and the old one stays as it was.
The stage commands are replaced by a stand-in that writes what `r1mega eval` would (no model runs)."""
from __future__ import annotations

import json
import os

import pytest

from r1mega import recipe


def _runner(tmp_path, monkeypatch, **eval_cfg):
    cfg = {"model_config": "configs/tiny/r1_pipeline_model.yaml",
           "eval": {"samples": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "template": "raw",
                    "stop": ["\n"], **eval_cfg},
           "stages": [{"name": "base", "kind": "pretrain"}]}
    runner = recipe.Runner(cfg, str(tmp_path / "run"), 1, seed=1)
    launched = []

    def fake_eval(argv, log):  # what `r1mega eval` writes, with the protocol it was given
        launched.append(argv)
        flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
        k, t = int(flag("--samples")), float(flag("--temperature"))
        summary = {"pass@1": t / 10, f"cons@{k}": t / 10, "samples": k, "temperature": t}
        os.makedirs(os.path.join(flag("--out"), "heldout"))
        with open(os.path.join(flag("--out"), "heldout", "summary.json"), "w") as f:
            json.dump(summary, f)
        with open(os.path.join(flag("--out"), "summary.json"), "w") as f:
            json.dump({"heldout": summary}, f)
        return ""

    monkeypatch.setattr(runner, "launch", fake_eval)
    monkeypatch.setattr(runner, "weights", lambda stage: str(tmp_path / "run" / stage / "weights"))
    return runner, launched


@pytest.mark.parametrize("change", [{"temperature": 1.0}, {"samples": 3}, {"max_new_tokens": 16},
                                    {"stop": ["</answer>"]}, {"template": "r1"}])
def test_a_changed_eval_protocol_is_evaluated_anew(tmp_path, monkeypatch, change):
    first, ran = _runner(tmp_path, monkeypatch)
    before = first.evaluate("base", "heldout.jsonl")
    assert len(ran) == 1 and before["temperature"] == 0.6
    again, ran = _runner(tmp_path, monkeypatch)
    assert again.evaluate("base", "heldout.jsonl") == before and not ran  # same protocol: reused
    other, ran = _runner(tmp_path, monkeypatch, **change)
    after = other.evaluate("base", "heldout.jsonl")
    assert len(ran) == 1, "the new protocol was not evaluated"
    k = change.get("samples", 2)
    assert after["samples"] == k and f"cons@{k}" in after and after["temperature"] == change.get("temperature", 0.6)
    # the first protocol's evaluation is still there, as it was
    back, ran = _runner(tmp_path, monkeypatch)
    assert back.evaluate("base", "heldout.jsonl") == before and not ran
