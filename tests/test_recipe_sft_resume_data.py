"""`r1mega sft` resumed from its own run directory with another data file: the run continued at the
saved position (consumed rows) in the new file, silently, so the result was neither run (GRPO refuses
the same for its prompt files). The SFT data's content digest is saved with each checkpoint and a
resume on other data is refused by key; the same file resumes."""
import json
import os

from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _chats(path, op):
    with open(path, "w") as f:
        for a in range(6):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Q: {a}{op}2="},
                                             {"role": "assistant", "content": f"A: {eval(f'{a}{op}2')}"}]}) + "\n")


def test_an_sft_resume_on_other_data_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _chats(a, "+")
    _chats(b, "*")
    from r1mega.config import load_config
    from r1mega.data.synthetic import resolve_data

    config = os.path.join(ROOT, "configs", "tiny", "sft.yaml")
    cfg = load_config(config, [f"data.cache_dir={tmp_path / 'data'}"])
    tokenizer = resolve_data(cfg.data, "sft", cfg.model.vocab_size).tokenizer  # the tiny runs' own
    run = tmp_path / "run"
    base = ["sft", "--config", config, f"train.run_dir={run}", "data.synthetic=null", f"data.tokenizer={tokenizer}",
            "data.global_batch_size=4", "data.seq_length=32",
            "train.log_interval=100", "train.save_interval=1", "optim.warmup_steps=1"]
    assert main([*base, f"data.paths=[{a}]", "train.steps=1"]) == 0
    capsys.readouterr()
    assert main([*base, f"data.paths=[{b}]", "train.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "error: config error at 'data.paths':" in err and "was saved at a position in other SFT data" in err
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000001"]  # nothing trained on b
    assert main([*base, f"data.paths=[{a}]", "train.steps=2"]) == 0  # the same data resumes
    assert "resumed from" in capsys.readouterr().out
