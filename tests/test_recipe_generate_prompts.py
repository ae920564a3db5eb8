"""`r1mega generate` rerun on a prompt file whose text changed. Problems are done by id, so a rerun
after fixing a prompt (same id, new text) skipped it and kept the samples of the old text: the
directory no longer equalled an unbroken run on the file, silently. Each sample now records a digest
of the prompt tokens it was drawn from; a finished problem whose prompt changed is refused by id and
file:line. Prompts appended to the file are still generated on a rerun (the store grows)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from cli_in_process import run_main
from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoint(root, **model) -> dict:
    """A 1-layer MoE checkpoint (random weights) and a sentencepiece tokenizer of the corpus, under root."""
    import torch

    from r1mega.config import Config, ModelConfig
    from r1mega.data.synthetic import pretrain_corpus
    from r1mega.data.tokenizer import train_sentencepiece
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.setup import build_chunks, init_weights
    from r1mega.train.optimizer import DistributedAdamW

    tok = train_sentencepiece(pretrain_corpus(200), str(root / "tok"), 384)
    cfg = Config(model=ModelConfig(vocab_size=384, num_layers=1, n_routed_experts=4, n_group=1,
                                   first_k_dense_replace=1, num_mtp_layers=0, **model))
    ps = single_process_state()
    torch.manual_seed(0)
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, 3)
    save_checkpoint(str(root / "ckpt"), 1, chunks, DistributedAdamW(chunks, ps, cfg.optim), ps,
                    {"model_config": asdict(cfg.model)})
    return {"ckpt": str(root / "ckpt"), "tok": tok}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("gen_prompts"))


def _prompts(path, texts):
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))


def _generate(tiny, prompts, out):
    return run_main(main, ["generate", "--model", tiny["ckpt"], "--tokenizer", tiny["tok"], "--prompts", prompts,
                           "--out", out, "--template", "raw", "--samples", "2", "--max-new-tokens", "4",
                           "--temperature", "1.0"])  # `r1mega generate ...` in this process


def test_a_finished_problem_whose_prompt_changed_is_refused(tiny, tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "gen"
    _prompts(prompts, ["Q: 1+2=", "Q: 3+4="])
    assert _generate(tiny, prompts, out).returncode == 0
    before = sorted(os.listdir(out))
    shard = (out / "shard-00000.jsonl").read_text()
    _prompts(prompts, ["Q: 1+2=", "Q: 30+4="])  # p1 fixed after it was sampled
    r = _generate(tiny, prompts, out)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    assert "error:" in r.stderr and "'p1'" in r.stderr and f"{prompts}:2" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == before and (out / "shard-00000.jsonl").read_text() == shard


def test_prompts_appended_to_the_file_are_generated(tiny, tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "gen"
    _prompts(prompts, ["Q: 1+2="])
    assert _generate(tiny, prompts, out).returncode == 0
    _prompts(prompts, ["Q: 1+2=", "Q: 5+6="])
    r = _generate(tiny, prompts, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 of 2 problems already done" in r.stdout
    ids = [json.loads(line)["id"] for name in sorted(os.listdir(out)) if name.startswith("shard-")
           for line in (out / name).read_text().splitlines()]
    assert sorted(ids) == ["p0", "p0", "p1", "p1"]


# Without --max-new-tokens the cap is what the model's positions leave after the longest prompt (a 32K-position
# student: 32768 - longest). A rerun after the prompt file changed its longest prompt computed another cap and
# was refused as "different settings" although the flags were the same: removing the long prompt, or appending
# a short one, ended the resume. The rerun now keeps the cap its samples were drawn with while every prompt
# still fits under it, and otherwise says which prompt leaves too little room.
@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("gen_short_context"), max_position_embeddings=32)


def _generate_default_cap(tiny, prompts, out):
    return run_main(main, ["generate", "--model", tiny["ckpt"], "--tokenizer", tiny["tok"], "--prompts", prompts,
                           "--out", out, "--template", "raw", "--samples", "1", "--temperature", "0"])


def _cap(out) -> int:
    return json.loads((out / "meta.json").read_text())["sampling"]["max_new_tokens"]


LONG = "Q: 12+34+56+78+90+12+34="


def test_a_rerun_without_max_new_tokens_keeps_the_cap_its_samples_were_drawn_with(short_context, tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "gen"
    _records(prompts, [("a", LONG), ("b", "Q: 1+2=")])
    assert _generate_default_cap(short_context, prompts, out).returncode == 0
    cap = _cap(out)
    _records(prompts, [("b", "Q: 1+2="), ("c", "Q: 5+6=")])  # the long one removed, a short one added
    r = _generate_default_cap(short_context, prompts, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 of 2 problems already done" in r.stdout and _cap(out) == cap
    done = [json.loads(line) for name in sorted(os.listdir(out)) if name.startswith("shard-")
            for line in (out / name).read_text().splitlines()]
    assert sorted(d["id"] for d in done) == ["a", "b", "c"]


def _records(path, pairs):
    path.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in pairs))


def test_a_rerun_whose_new_prompt_leaves_less_room_names_it(short_context, tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "gen"
    _prompts(prompts, ["Q: 1+2="])
    assert _generate_default_cap(short_context, prompts, out).returncode == 0
    cap = _cap(out)
    before = (out / "shard-00000.jsonl").read_text()
    _prompts(prompts, ["Q: 1+2=", LONG])
    r = _generate_default_cap(short_context, prompts, out)
    assert r.returncode == 2
    assert "error:" in r.stderr and "'p1'" in r.stderr and f"{cap} new tokens" in r.stderr, r.stderr
    assert "--max-new-tokens" in r.stderr and "different settings" not in r.stderr, r.stderr
    assert (out / "shard-00000.jsonl").read_text() == before
