"""A generate/eval/reject-sample directory resumed with another --dtype: bfloat16 draws other samples
than float32 (2 of 8 differed on the tiny model at 40 tokens), yet the resume mixed them into one set
silently (meta.json did not record the dtype). It is refused now by name; a directory made before
the dtype was recorded resumes as before."""
import json
import os

import pytest

from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny", "pretrain.yaml")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_dtype")
    data = f"data.cache_dir={root / 'data'}"
    assert main(["pretrain", "--config", CONFIG, "train.steps=1", f"train.run_dir={root / 'run'}", data,
                 "train.log_interval=100"]) == 0
    prompts = root / "p.jsonl"
    prompts.write_text('{"prompt": "Q: 1+2="}\n{"prompt": "Q: 3+4="}\n')
    return root, ["--model", str(root / "run"), "--config", CONFIG, data, "--prompts", str(prompts),
                  "--samples", "2", "--template", "raw", "--max-new-tokens", "3"]


def test_a_resume_in_another_dtype_is_refused(model, capsys):
    root, args = model
    out = root / "gen"
    assert main(["generate", *args, "--out", str(out)]) == 0
    before = sorted(os.listdir(out))
    assert json.loads((out / "meta.json").read_text())["dtype"] == "float32"
    assert main(["generate", *args, "--out", str(out), "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "error: generate: config error at '--out'" in err and "'dtype': \"'float32' -> 'bfloat16'\"" in err
    assert sorted(os.listdir(out)) == before
    assert main(["generate", *args, "--out", str(out)]) == 0  # the same dtype resumes (nothing left to do)


def test_a_directory_from_before_the_dtype_was_recorded_resumes(model):
    root, args = model
    out = root / "old"
    assert main(["generate", *args, "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    del meta["dtype"]
    (out / "meta.json").write_text(json.dumps(meta))
    assert main(["generate", *args, "--out", str(out)]) == 0
