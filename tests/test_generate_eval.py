"""`r1mega generate` / `r1mega eval` on a tiny random r1mega checkpoint: kill -9 then resume loses and
duplicates nothing (and equals an uninterrupted run), 4 ranks (TP2 x EP2, DP2) draw the same samples
as one process, scoring completions made elsewhere gives the same numbers as generating them."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny MoE saved as an r1mega checkpoint, its sentencepiece tokenizer, and prompts."""
    import torch

    from r1mega.config import Config, ModelConfig
    from r1mega.data.synthetic import pretrain_corpus
    from r1mega.data.tokenizer import train_sentencepiece
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.optimizer import DistributedAdamW
    from r1mega.train.setup import build_chunks, init_weights

    root = tmp_path_factory.mktemp("tiny")
    tok = train_sentencepiece(pretrain_corpus(200), str(root / "tok"), 384)
    cfg = Config(model=ModelConfig(vocab_size=384, num_layers=2, n_routed_experts=4, n_group=1))
    ps = single_process_state()
    torch.manual_seed(0)
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, 7)
    save_checkpoint(str(root / "ckpt"), 1, chunks, DistributedAdamW(chunks, ps, cfg.optim), ps,
                    {"model_config": asdict(cfg.model)})
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Q: {i}+{i % 7}=", "answer": str(i + i % 7)}) + "\n")
    return {"ckpt": str(root / "ckpt"), "tok": tok, "prompts": str(prompts), "root": root}


def _cmd(tiny, kind, out, *extra, nproc=1):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
              if nproc > 1 else [sys.executable])
    return [*launch, "-m", "r1mega.cli", kind, "--model", tiny["ckpt"], "--tokenizer", tiny["tok"],
            "--out", str(out), "--template", "raw", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def _in_process(tiny, kind, out, *extra):
    """The one-process command's main() in this process (no interpreter start); the killed run, the
    four-rank eval and reject-sample below start the command as a user does."""
    from cli_in_process import run_main
    from r1mega.cli import main

    return run_main(main, _cmd(tiny, kind, out, *extra)[3:])


def _samples(out):
    recs = []
    for name in sorted(os.listdir(out)):
        if name.startswith("shard-"):
            with open(os.path.join(out, name)) as f:
                recs += [json.loads(line) for line in f]
    return recs


def test_kill_9_then_resume_loses_and_duplicates_nothing(tiny, tmp_path):
    args = ["--prompts", tiny["prompts"], "--samples", "3", "--max-new-tokens", "24", "--problems-per-round", "1",
            "--temperature", "1.0", "--top-p", "1.0"]
    ref = tmp_path / "ref"
    assert _in_process(tiny, "generate", ref, *args).returncode == 0
    out = tmp_path / "crashed"
    proc = subprocess.Popen(_cmd(tiny, "generate", out, *args), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "shard-00000.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_text().count("\n") >= 15:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "generate finished before it could be killed"
    before = _samples(out)
    assert 15 <= len(before) < 120
    with open(shard, "a") as f:  # what a crash in the middle of a write leaves
        f.write('{"id": "p39", "sample": 0, "compl')
    res = _in_process(tiny, "generate", out, *args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout
    after = _samples(out)
    keys = [(r["id"], r["sample"]) for r in after]
    assert len(keys) == len(set(keys)) == 40 * 3
    # every finished problem survived as it was, and the rest equal an uninterrupted run
    assert all(r in after for r in before if r["id"] in {a["id"] for a in before if a["sample"] == 2})
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert sorted(after, key=key) == sorted(_samples(ref), key=key)
    for r in after:
        assert r["finish_reason"] in ("eos", "stop", "length") and r["completion_tokens"] >= 1
        assert r["prompt_tokens"] > 0


def test_four_ranks_match_one_process_and_completions_score_the_same(tiny, tmp_path):
    from r1mega.eval.benchmark import read_completions
    from r1mega.data.jsonl import DataError
    from r1mega.generation.records import read_prompt_records

    args = ["--data", tiny["prompts"], "--samples", "4", "--max-new-tokens", "6", "--problems-per-round", "16"]
    one = _in_process(tiny, "eval", tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr[-2000:]
    four = subprocess.run(_cmd(tiny, "eval", tmp_path / "four", *args, "--tp", "2", "--ep", "2", nproc=4),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert four.returncode == 0, four.stderr[-3000:]
    last = one.stdout.strip().splitlines()[-1]
    assert last.startswith("pass@1=") and last.endswith("problems=40 samples=4 temperature=0.6 top_p=0.95") and " cons@4=" in last
    assert four.stdout.strip().splitlines()[-1] == last
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    s1 = sorted(_samples(tmp_path / "one" / "prompts" / "samples"), key=key)
    s4 = sorted(_samples(tmp_path / "four" / "prompts" / "samples"), key=key)
    assert [r["completion"] for r in s1] == [r["completion"] for r in s4]
    # the same completions, handed over as a file, score the same
    comp = tmp_path / "completions.jsonl"
    comp.write_text("".join(json.dumps({"id": r["id"], "completion": r["completion"]}) + "\n" for r in s1))
    from cli_in_process import run_main
    from r1mega.cli import main

    scored = run_main(main, ["eval", "--data", tiny["prompts"], "--completions", comp, "--out", tmp_path / "ext",
                             "--temperature", "0.6", "--top-p", "0.95"])  # what they were sampled with
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert scored.stdout.strip().splitlines()[-1] == last
    summary = json.loads((tmp_path / "one" / "prompts" / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "ext" / "prompts" / "summary.json").read_text())
    # not stated: the same numbers, and no sampling setting claimed (none was used here)
    unstated = run_main(main, ["eval", "--data", tiny["prompts"], "--completions", comp, "--out", tmp_path / "ext2"])
    assert unstated.returncode == 0, unstated.stderr[-2000:]
    assert unstated.stdout.strip().splitlines()[-1] == last[:last.index(" temperature=")]
    plain = json.loads((tmp_path / "ext2" / "prompts" / "summary.json").read_text())
    assert plain == {k: v for k, v in summary.items() if k not in ("temperature", "top_p")}
    assert (tmp_path / "one" / "summary.md").read_text().startswith("| benchmark |")
    # a problem with a different number of completions is named
    comp.write_text(comp.read_text() + json.dumps({"id": "p3", "completion": "A: 6"}) + "\n")
    with pytest.raises(DataError, match="'p3' has 5|different sample counts"):
        read_completions(str(comp), read_prompt_records(tiny["prompts"]))


def test_store_repairs_a_torn_tail_and_refuses_other_settings(tmp_path):
    from r1mega.errors import ConfigError
    from r1mega.generation.store import SampleStore

    meta = {"template": "raw", "model": "/m", "sampling": {"temperature": 0.6}}
    rec = lambda pid, i: {"id": pid, "sample": i, "completion": f"{pid}-{i}"}  # noqa: E731
    store = SampleStore(str(tmp_path), 2, meta)
    store.write([("a", [rec("a", 0), rec("a", 1)]), ("b", [rec("b", 0), rec("b", 1)])])
    store.close()
    shard = tmp_path / "shard-00000.jsonl"
    with open(shard, "a") as f:  # a round cut short: one whole sample of "c", then half a line
        f.write(json.dumps(rec("c", 0)) + "\n" + '{"id": "c", "sam')
    again = SampleStore(str(tmp_path), 2, meta)
    assert again.done == {"a", "b"} and again.repaired == 1
    assert [json.loads(x)["id"] for x in shard.read_text().splitlines()] == ["a", "a", "b", "b"]
    again.write([("c", [rec("c", 0), rec("c", 1)])])  # a new session writes a new shard
    again.close()
    assert sorted((r["id"], r["sample"]) for r in again.records()) == [(p, i) for p in "abc" for i in (0, 1)]
    assert (tmp_path / "shard-00001.jsonl").exists()
    with pytest.raises(ConfigError, match="different settings"):
        SampleStore(str(tmp_path), 2, {**meta, "sampling": {"temperature": 1.0}})
    with pytest.raises(ConfigError, match="different settings"):
        SampleStore(str(tmp_path), 3, meta)


def test_store_compares_stop_strings_as_a_set(tmp_path):
    """The same --stop strings in another order (or one given twice) stop the same samples: a resume
    with them continues; another set is refused."""
    from r1mega.errors import ConfigError
    from r1mega.generation.store import SampleStore

    meta = lambda *stop: {"template": "raw", "model": "/m", "sampling": {"temperature": 0.6, "stop": list(stop)}}  # noqa: E731
    SampleStore(str(tmp_path), 1, meta("</answer>", "\n\n")).close()
    SampleStore(str(tmp_path), 1, meta("\n\n", "</answer>")).close()
    SampleStore(str(tmp_path), 1, meta("\n\n", "</answer>", "\n\n")).close()
    with pytest.raises(ConfigError, match="different settings"):
        SampleStore(str(tmp_path), 1, meta("</answer>"))
    assert json.loads((tmp_path / "meta.json").read_text())["sampling"]["stop"] == ["</answer>", "\n\n"]


def test_a_stop_string_ending_inside_a_token_ends_the_written_text_with_it():
    """A completion stopped by a string that ends inside its last token ("9" in "19x"): the written text
    ends with the stop string (as vLLM's does), the earliest of them whatever their order; the ids stay as
    sampled; EOS and length endings keep their whole text."""
    from r1mega.generation.sampling_rounds import SamplingParams, Sample, _finish

    class Tok:
        pieces = {1: "A: ", 2: "19x", 3: " Q", 4: "</s>"}
        eos_ids = {4}

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

        decode_continuation = decode  # (no word-start spaces to keep)

    tok = Tok()
    ids = [1, 2]
    params = SamplingParams(stop=["x", "9"])
    text, reason = _finish(ids, tok.decode(ids), tok, params)
    assert (text, reason) == ("A: 19", "stop")
    assert Sample(0, text, 3, len(ids), reason, [7], ids).completion_ids == [1, 2]
    assert _finish([1, 2, 4], tok.decode([1, 2, 4]), tok, params) == ("A: 19x", "eos")
    assert _finish([1, 3], tok.decode([1, 3]), tok, params) == ("A:  Q", "length")


def test_hf_directory_greedy_equals_transformers(tiny, tmp_path):
    """A Hugging Face directory loads as a model source; greedy completions equal transformers'."""
    import torch

    from r1mega.cli import main
    from r1mega.data.tokenizer import Tokenizer
    from tiny_hf import make_hf_model

    hf = make_hf_model(vocab_size=384, seed=3, n_group=2, topk_group=1)
    hf.save_pretrained(tmp_path / "hf")
    prompts = tmp_path / "p.jsonl"
    texts = ["Q: 12+30=", "Q: 7-3= 7 minus"]
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": t}) + "\n" for i, t in enumerate(texts)))
    assert main(["generate", "--model", str(tmp_path / "hf"), "--tokenizer", tiny["tok"], "--prompts", str(prompts),
                 "--out", str(tmp_path / "out"), "--template", "raw", "--temperature", "0", "--max-new-tokens", "6"]) == 0
    ours = {r["id"]: r["completion"] for r in _samples(tmp_path / "out")}
    tok = Tokenizer(tiny["tok"])
    for i, t in enumerate(texts):
        ids = torch.tensor([tok.encode(t)])
        with torch.no_grad():
            for _ in range(6):  # plain greedy by full forwards, the reference
                logits = hf(ids).logits[0, -1]
                logits[tok.vocab_size:] = float("-inf")
                ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
        prompt, new = tok.encode(t), ids[0, len(tok.encode(t)):].tolist()
        if tok.eos_id in new:
            new = new[:new.index(tok.eos_id)]
        # the completion as it reads after the prompt (a first token that starts a word keeps its space)
        full, head = tok.decode(prompt + new), tok.decode(prompt)
        assert full.startswith(head) and ours[str(i)] == full[len(head):], (ours[str(i)], full, head)


def test_reject_sample_keeps_the_sampled_ids_and_sft_trains_them(tiny, tmp_path):
    """The ids a model sampled reach SFT unchanged (not the text encoded again)."""
    from r1mega.data.prompts import cut_after_stop
    from r1mega.data.sft import IGNORE, SFTData
    from r1mega.data.tokenizer import Tokenizer

    # no answers: kept on readability alone; a space ends a completion: a random model finishes some
    prompts = tmp_path / "open.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Q: {i}+1="}) + "\n" for i in range(3)))
    out = tmp_path / "rs"
    cmd = [sys.executable, "-m", "r1mega.cli", "reject-sample", "--model", tiny["ckpt"], "--tokenizer", tiny["tok"],
           "--prompts", str(prompts), "--out", str(out), "--template", "raw", "--samples", "2", "--keep", "2",
           "--max-new-tokens", "16", "--stop", " ", "--no-require-format", "--min-language-share", "0"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tok = Tokenizer(tiny["tok"])
    rows = [json.loads(line) for line in open(out / "sft.jsonl")]
    kept = [r for r in rows if r["completion_ids"]]
    assert kept and all(r["tokenizer"] == tok.fingerprint() for r in kept)
    for r in kept:
        assert r["prompt_ids"] == tok.encode(r["messages"][0]["content"])
        ids = r["completion_ids"]
        text = tok.decode_continuation(ids[:-1] if ids[-1] == tok.eos_id else ids)  # as it follows the prompt
        # the stop string " " can end inside the last token: the text ends with it, the ids keep the token
        assert r["messages"][-1]["content"] == (text if ids[-1] == tok.eos_id else cut_after_stop(text, [" "]))
    data = SFTData(str(out / "sft.jsonl"), tok, seq_length=64, seed=0, template="raw")
    assert data.sampled == len(rows)
    trained = sorted(row.labels[row.labels != IGNORE].tolist() for row in data.rows)
    expected = sorted(r["completion_ids"] + ([] if r["completion_ids"][-1] == tok.eos_id else [tok.eos_id])
                      for r in rows)
    if len(data.rows) == len(rows):  # one conversation per packed row: compare them one by one
        assert trained == expected
    assert sum(len(t) for t in trained) == sum(len(e) for e in expected)


def test_a_completion_reads_as_it_follows_the_prompt(tiny, tmp_path, capsys):
    """A SentencePiece completion whose first token starts a word (`▁minus`) reads ` minus`, as after its
    prompt: the stop string " minus" ends it at that token, and the written text keeps the space. Decoded
    on its own it read `minus` (the stop missed, the text not what followed the prompt)."""
    from r1mega.cli import main
    from r1mega.data.tokenizer import Tokenizer
    from r1mega.generation.sampling_rounds import SamplingParams, _finish, _stop_check

    tok = Tokenizer(tiny["tok"])
    for text in ("Q: 7-3= 7 minus 3", "A: 12 plus 30 is 42", "Q: 5+5="):
        ids = tok.encode(text)
        for j in range(1, len(ids)):
            whole, head = tok.decode(ids), tok.decode(ids[:j])
            if whole.startswith(head):
                assert tok.decode_continuation(ids[j:]) == whole[len(head):], (text, j)
    prompt, completion = tok.encode("7"), tok.encode("7 minus 3")[1:]
    assert tok.decode(prompt + completion) == "7 minus 3" and tok.decode(completion[:1]).strip() == "minus"
    hit = _stop_check(tok, [" minus"])
    assert hit(completion[:1]) and not hit(tok.encode("7 3")[1:])
    assert _finish(completion[:1], tok.decode_continuation(completion[:1]), tok,
                   SamplingParams(stop=[" minus"])) == (" minus", "stop")
    # --seed as the config's seed: below 2^64 (a larger one would be the same seed mod 2^64)
    assert main(["generate", "--model", tiny["ckpt"], "--tokenizer", tiny["tok"], "--prompts", tiny["prompts"],
                 "--out", str(tmp_path / "out"), "--seed", str(2 ** 64)]) == 2
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "out").exists()
