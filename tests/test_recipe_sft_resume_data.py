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


def test_an_sft_resume_that_renders_the_same_file_otherwise_is_refused(tmp_path, capsys):
    """The same chat file under another data.sft_template, or through another tokenizer, packs other
    rows: the saved position (consumed rows) meant other samples, and the run went on silently (only
    the file's digest was compared). Refused by key now; allow_data_change continues."""
    a = tmp_path / "a.jsonl"
    _chats(a, "+")
    from r1mega.config import load_config
    from r1mega.data.synthetic import resolve_data

    config = os.path.join(ROOT, "configs", "tiny", "sft.yaml")
    toks = [resolve_data(load_config(config, [f"data.cache_dir={tmp_path / 'data'}", f"data.synthetic={kind}"]).data,
                         "sft", 384).tokenizer for kind in ("arithmetic", "sum3")]
    run = tmp_path / "run"
    base = ["sft", "--config", config, f"train.run_dir={run}", "data.synthetic=null", f"data.paths=[{a}]",
            "data.global_batch_size=4", "data.seq_length=32", "train.log_interval=100", "train.save_interval=1",
            "optim.warmup_steps=1"]
    assert main([*base, f"data.tokenizer={toks[0]}", "data.sft_template=r1", "train.steps=1"]) == 0
    capsys.readouterr()
    assert main([*base, f"data.tokenizer={toks[0]}", "data.sft_template=raw", "train.steps=2"]) == 2
    assert "error: config error at 'data.sft_template':" in capsys.readouterr().err
    assert main([*base, f"data.tokenizer={toks[1]}", "data.sft_template=r1", "train.steps=2"]) == 2
    assert "error: config error at 'data.tokenizer':" in capsys.readouterr().err
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_00000001"]
    assert main([*base, f"data.tokenizer={toks[0]}", "data.sft_template=r1", "train.steps=2"]) == 0
    assert main([*base, f"data.tokenizer={toks[1]}", "data.sft_template=raw", "train.steps=3",
                 "train.allow_data_change=true"]) == 0
