"""How `r1mega generate` keys a sample's noise by its problem id (generation/sampling_rounds.py): a
64-bit BLAKE2b digest of the id, so two problems never share noise in practice, where the former
CRC-32 key made two of 50K ids share all their samples' noise with probability ~25%. The scheme is
recorded in the output directory's meta.json; a directory without the record (made before it)
resumes with the CRC scheme and keeps drawing what it drew."""
import hashlib
import json
import os
import zlib
from dataclasses import asdict

import pytest
import torch

import r1mega.generation.run as run_module
from r1mega.generation.sampling_rounds import NOISE_KEY, SamplingParams, sample_key
from r1mega.inference.generate import GenerationConfig, generate
from rl_workers import sharp_model


def crc_colliding_ids() -> tuple[str, str]:
    """Two ids with the same CRC-32 (a birthday search over hex strings: ~40K tries)."""
    seen = {}
    for i in range(1_000_000):
        pid = hashlib.sha256(str(i).encode()).hexdigest()[:12]
        c = zlib.crc32(pid.encode())
        if c in seen:
            return seen[c], pid
        seen[c] = pid
    raise AssertionError("no CRC-32 collision found")


def test_keys_of_both_schemes():
    assert NOISE_KEY == "blake2b64"
    for pid, s in (("p0", 0), ("p0", 15), ("problem/7", 3), (12345, 1)):
        assert sample_key(pid, s, "crc32") == (zlib.crc32(str(pid).encode()) << 24) + s  # the former key, bitwise
        k = sample_key(pid, s)
        assert -(1 << 63) <= k < (1 << 63)  # an int64
        digest = int.from_bytes(hashlib.blake2b(str(pid).encode(), digest_size=8).digest(), "little")
        assert k % (1 << 64) == (digest + s) % (1 << 64)
    assert "noise_key" not in SamplingParams().recorded()  # not a setting a resume compares


def test_ids_colliding_under_crc32_now_draw_different_samples():
    a, b = crc_colliding_ids()
    assert a != b and zlib.crc32(a.encode()) == zlib.crc32(b.encode())
    chunks, ps = sharp_model({}, 1)
    prompt = [5, 6, 7, 8, 9]  # both problems ask the same: only the noise can tell them apart
    gen = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=0)

    def completions(scheme):
        keys = torch.tensor([sample_key(pid, s, scheme) for pid in (a, b) for s in range(4)])
        out = generate(chunks, ps, [prompt] * 8, gen, rows=keys).completions()
        return out[:4], out[4:]

    old_a, old_b = completions("crc32")
    assert old_a == old_b  # the bug: every sample of b repeats a's
    new_a, new_b = completions("blake2b64")
    assert all(x != y for x, y in zip(new_a, new_b))
    assert len({tuple(c) for c in new_a + new_b}) == 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny MoE checkpoint, its tokenizer and 10 prompts (and the first 4 of them)."""
    from r1mega.config import Config, ModelConfig
    from r1mega.data.synthetic import pretrain_corpus
    from r1mega.data.tokenizer import train_sentencepiece
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.setup import build_chunks, init_weights
    from r1mega.train.optimizer import DistributedAdamW

    root = tmp_path_factory.mktemp("noise")
    tok = train_sentencepiece(pretrain_corpus(200), str(root / "tok"), 384)
    cfg = Config(model=ModelConfig(vocab_size=384, num_layers=2, n_routed_experts=4, n_group=1))
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, 7)
    save_checkpoint(str(root / "ckpt"), 1, chunks, DistributedAdamW(chunks, ps, cfg.optim), ps,
                    {"model_config": asdict(cfg.model)})
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Q: {i}+{i % 7}=", "answer": str(i + i % 7)}) + "\n"
             for i in range(10)]
    (root / "all.jsonl").write_text("".join(lines))
    (root / "first.jsonl").write_text("".join(lines[:4]))  # what a run killed after 4 problems stored
    return root, tok


def _generate(tiny, prompts, out):
    from r1mega.cli import main

    root, tok = tiny
    torch.set_num_threads(1)
    assert main(["generate", "--model", str(root / "ckpt"), "--tokenizer", tok, "--out", str(out), "--template", "raw",
                 "--prompts", str(root / prompts), "--samples", "3", "--max-new-tokens", "10", "--temperature", "1.0",
                 "--top-p", "1.0", "--problems-per-round", "3"]) == 0
    recs = [json.loads(line) for name in sorted(os.listdir(out)) if name.startswith("shard-")
            for line in open(out / name)]
    return {(r["id"], r["sample"]): r["completion"] for r in recs}, json.load(open(out / "meta.json"))


def test_new_directories_record_blake2b_and_old_ones_resume_with_crc(tiny, tmp_path, monkeypatch):
    new, meta = _generate(tiny, "all.jsonl", tmp_path / "new")
    assert meta["noise_key"] == "blake2b64" and len(new) == 30
    # a new directory resumed keeps its scheme: the uninterrupted run's samples
    _generate(tiny, "first.jsonl", tmp_path / "new_resumed")
    resumed, meta = _generate(tiny, "all.jsonl", tmp_path / "new_resumed")
    assert resumed == new and meta["noise_key"] == "blake2b64"

    # an old directory: drawn with the CRC key, its meta.json without a noise_key (as the former code wrote it)
    with monkeypatch.context() as m:
        m.setattr(run_module, "NOISE_KEY", "crc32")
        crc, _ = _generate(tiny, "all.jsonl", tmp_path / "crc_reference")  # the former code's uninterrupted run
        _generate(tiny, "first.jsonl", tmp_path / "old")
    meta_file = tmp_path / "old" / "meta.json"
    old_meta = json.load(open(meta_file))
    assert old_meta.pop("noise_key") == "crc32"
    meta_file.write_text(json.dumps(old_meta))
    resumed, meta = _generate(tiny, "all.jsonl", tmp_path / "old")  # today's code resumes it
    assert resumed == crc and "noise_key" not in meta  # what the old directory would have drawn
    assert sum(crc[k] != new[k] for k in new) > 20  # and the schemes draw different samples


def test_an_unknown_scheme_in_meta_json_is_refused(tiny, tmp_path, capsys):
    from r1mega.cli import main

    _generate(tiny, "first.jsonl", tmp_path / "out")
    meta = json.load(open(tmp_path / "out" / "meta.json"))
    (tmp_path / "out" / "meta.json").write_text(json.dumps({**meta, "noise_key": "md5"}))
    root, tok = tiny
    code = main(["generate", "--model", str(root / "ckpt"), "--tokenizer", tok, "--out", str(tmp_path / "out"),
                 "--template", "raw", "--prompts", str(root / "all.jsonl"), "--samples", "3", "--max-new-tokens", "10",
                 "--temperature", "1.0", "--top-p", "1.0"])
    assert code != 0
    err = capsys.readouterr().err
    assert "meta.json" in err and "noise_key 'md5'" in err, err
