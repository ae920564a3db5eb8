"""`reject-sample --samples-from GEN --prompts P` pairs GEN's samples with P's records by id, and ids
are line numbers unless given: a prompt file other than the one generate sampled (another split,
a shuffled copy) had its answers judged against samples of other questions, and its questions
written into sft.jsonl beside those answers, silently. Each sample now carries a digest of its
question; another question under the same id is refused by file:line (new answers are fine)."""
import json
import os

import pytest

from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny", "pretrain.yaml")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples_from")
    data = f"data.cache_dir={root / 'data'}"
    assert main(["pretrain", "--config", CONFIG, "train.steps=1", f"train.run_dir={root / 'run'}", data,
                 "train.log_interval=100"]) == 0
    prompts = root / "p.jsonl"  # no ids: "1", "2"
    prompts.write_text('{"prompt": "Q: 1+2=", "answer": "3"}\n{"prompt": "Q: 3+4=", "answer": "7"}\n')
    gen = root / "gen"
    assert main(["generate", "--model", str(root / "run"), "--config", CONFIG, data, "--prompts", str(prompts),
                 "--out", str(gen), "--samples", "2", "--template", "raw", "--max-new-tokens", "3"]) == 0
    return root, gen


def _reject(root, gen, prompts, out):
    return main(["reject-sample", "--samples-from", str(gen), "--prompts", str(prompts), "--out", str(root / out),
                 "--no-require-format", "--answer-fallback", "none"])


def test_another_prompt_file_with_the_same_ids_is_refused(generated, capsys):
    root, gen = generated
    other = root / "other.jsonl"
    other.write_text('{"prompt": "Q: 1+2=", "answer": "3"}\n{"prompt": "What is the capital of France?", '
                     '"answer": "Paris"}\n')
    assert _reject(root, gen, other, "r_other") == 2
    err = capsys.readouterr().err
    assert f"error: {other}:2: problem '2' asks another question than the one its samples in --samples-from" in err
    assert not os.path.exists(root / "r_other" / "sft.jsonl")


def test_the_same_questions_with_corrected_answers_are_filtered(generated, capsys):
    root, gen = generated
    fixed = root / "fixed.jsonl"
    fixed.write_text('{"prompt": "Q: 1+2=", "answer": "3"}\n{"prompt": "Q: 3+4=", "answer": "8"}\n')
    assert _reject(root, gen, fixed, "r_fixed") == 0
    report = json.loads((root / "r_fixed" / "report.json").read_text())
    assert report["total"] == 4 and report["problems"] == 2
