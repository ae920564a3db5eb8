"""generate/eval/reject-sample resume a directory only for the model it was drawn from. The model was
known by its path alone: retrain a run at the same path (or re-export an HF directory) and rerun the
command, and it said "resuming, 2 of 2 problems already done" and reported the old model's samples
and numbers. meta.json now records a digest of the weights (checkpoint listings with their CRC32s,
safetensors headers; an HF directory's file times), and another model at the path is refused."""
import json
import os
import shutil

import pytest

from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny", "pretrain.yaml")


def _pretrain(root, seed):
    run = root / "run"
    shutil.rmtree(run, ignore_errors=True)
    assert main(["pretrain", "--config", CONFIG, "train.steps=1", f"train.run_dir={run}",
                 f"data.cache_dir={root / 'data'}", "train.log_interval=100", f"seed={seed}"]) == 0


@pytest.fixture
def setup(tmp_path):
    _pretrain(tmp_path, 1)
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"prompt": "Q: 1+2=", "answer": "3"}\n{"prompt": "Q: 3+4=", "answer": "7"}\n')
    args = ["--model", str(tmp_path / "run"), "--config", CONFIG, f"data.cache_dir={tmp_path / 'data'}",
            "--samples", "2", "--template", "raw", "--max-new-tokens", "3"]
    return tmp_path, bench, args


def test_eval_of_a_retrained_model_at_the_same_path_does_not_reuse_old_samples(setup, capsys):
    root, bench, args = setup
    out = root / "eval"
    assert main(["eval", *args, "--data", str(bench), "--out", str(out)]) == 0
    assert main(["eval", *args, "--data", str(bench), "--out", str(out)]) == 0  # the same model: resumed
    assert "resuming, 2 of 2 problems already done" in capsys.readouterr().out
    scored = (out / "bench" / "scored.jsonl").read_text()
    _pretrain(root, 7)  # another model, same path and step
    assert main(["eval", *args, "--data", str(bench), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds samples made with different settings {'weights':" in err
    assert (out / "bench" / "scored.jsonl").read_text() == scored  # nothing rewritten


def test_a_directory_from_before_the_weights_were_recorded_resumes(setup, capsys):
    root, bench, args = setup
    out = root / "gen"
    assert main(["generate", *args, "--prompts", str(bench), "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    del meta["weights"]
    (out / "meta.json").write_text(json.dumps(meta))
    assert main(["generate", *args, "--prompts", str(bench), "--out", str(out)]) == 0
    assert "resuming, 2 of 2 problems already done" in capsys.readouterr().out
