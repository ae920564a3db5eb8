"""Hostile probes of the synthetic corpus cache (data.cache_dir), shared by every run that names
it: runs on different run directories started together must not build it over each other."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from r1mega.config import ConfigError, DataConfig
from r1mega.data import synthetic


def _resolve(cache: str, barrier, counts: str, errors) -> None:
    real = synthetic._build

    def slow_build(*args):
        with open(counts, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # the other runs reach their DONE check meanwhile
        return real(*args)

    synthetic._build = slow_build
    barrier.wait()
    try:
        synthetic.resolve_data(DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=cache), "pretrain", 384)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(e).__name__}: {e}")


def test_runs_started_together_build_the_corpus_once(tmp_path):
    """Three runs sharing a fresh data.cache_dir: one builds, the others wait and use it. Before:
    each built it, renaming sft.jsonl.tmp under the others (FileNotFoundError traceback)."""
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(3), ctx.Queue()
    counts = str(tmp_path / "counts")
    procs = [ctx.Process(target=_resolve, args=(str(tmp_path / "cache"), barrier, counts, errors))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with open(counts) as f:
        assert f.read().count("built") == 1
    root = tmp_path / "cache" / "addition-64-v384"
    assert sorted(os.listdir(root)) == ["DONE", "pretrain.bin", "pretrain.idx", "sft.jsonl", "tokenizer.model",
                                        "tokenizer.vocab"]


def test_cache_dir_under_a_file_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(ConfigError, match="data.cache_dir"):
        synthetic.resolve_data(DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=str(blocker / "cache")),
                             "pretrain", 384)
    assert blocker.read_text() == "mine"


def test_a_tokenizer_only_run_builds_the_tokenizer_alone_and_the_corpus_reuses_it(tmp_path):
    """GRPO's prompts and generation read only the corpus's tokenizer: they build it alone; a later
    pretraining run completes the corpus around that very tokenizer, whose pieces are those a full
    build trains (sentencepiece on one thread is deterministic; the .model also records the path it
    was trained under), so the corpus is the same bytes."""
    cfg = DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=str(tmp_path / "a"))
    root = tmp_path / "a" / "addition-64-v384"
    path = synthetic.resolve_tokenizer(cfg, 384)
    assert path == str(root / "tokenizer.model")
    assert sorted(os.listdir(root)) == ["tokenizer.model", "tokenizer.vocab"]
    alone = (root / "tokenizer.model").read_bytes()
    d = synthetic.resolve_data(cfg, "pretrain", 384)
    assert d.tokenizer == path and d.paths == [str(root / "pretrain")]
    assert sorted(os.listdir(root)) == ["DONE", "pretrain.bin", "pretrain.idx", "sft.jsonl", "tokenizer.model",
                                        "tokenizer.vocab"]
    assert (root / "tokenizer.model").read_bytes() == alone
    full = DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=str(tmp_path / "b"))
    synthetic.resolve_data(full, "pretrain", 384)
    other = tmp_path / "b" / "addition-64-v384"
    for name in ("tokenizer.vocab", "pretrain.bin", "pretrain.idx", "sft.jsonl"):
        assert (other / name).read_bytes() == (root / name).read_bytes()
    assert synthetic.resolve_tokenizer(full, 384) == str(other / "tokenizer.model")  # built: nothing to do
    assert synthetic.resolve_tokenizer(DataConfig(tokenizer="tok.json"), 384) == "tok.json"
    assert synthetic.resolve_tokenizer(DataConfig(), 384) is None


def test_a_damaged_corpus_tokenizer_is_named_and_kept(tmp_path):
    """A tokenizer.model in the cache that cannot be loaded (truncated on disk) is named with what to
    do, by the tokenizer-only and the full build alike, and left as it was. Before: the full build,
    which now reuses a tokenizer-only build's tokenizer, died in sentencepiece with a traceback."""
    from r1mega.errors import DataError

    cfg = DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=str(tmp_path / "a"))
    model = tmp_path / "a" / "addition-64-v384" / "tokenizer.model"
    synthetic.resolve_tokenizer(cfg, 384)
    damaged = model.read_bytes()[:100]
    model.write_bytes(damaged)
    for resolve in (lambda: synthetic.resolve_data(cfg, "pretrain", 384), lambda: synthetic.resolve_tokenizer(cfg, 384)):
        with pytest.raises(DataError, match=f"{model}.*remove it"):
            resolve()
        assert model.read_bytes() == damaged
    assert not (model.parent / "DONE").exists()


def test_a_built_corpus_without_its_tokenizer_is_completed(tmp_path):
    """Removing a damaged tokenizer.model (what its error says to do) from a built corpus: the next
    pretraining run trains it again (the same pieces), as the tokenizer-only runs already did. Before:
    'data.tokenizer: ...tokenizer.model: not found' until the whole corpus was removed."""
    cfg = DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=str(tmp_path / "a"))
    d = synthetic.resolve_data(cfg, "pretrain", 384)
    vocab = (tmp_path / "a" / "addition-64-v384" / "tokenizer.vocab").read_bytes()
    corpus = (tmp_path / "a" / "addition-64-v384" / "pretrain.bin").read_bytes()
    os.remove(d.tokenizer)
    assert synthetic.resolve_data(cfg, "pretrain", 384) == d
    assert os.path.getsize(d.tokenizer) > 1000
    assert (tmp_path / "a" / "addition-64-v384" / "tokenizer.vocab").read_bytes() == vocab
    assert (tmp_path / "a" / "addition-64-v384" / "pretrain.bin").read_bytes() == corpus


def _resolve_on_rank(rank: int, world: int, cache: str, which: str) -> str:
    from r1mega.errors import R1MegaError

    cfg = DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=cache)
    try:
        if which == "tokenizer":
            synthetic.resolve_tokenizer(cfg, 384)
        else:
            synthetic.resolve_data(cfg, "pretrain", 384)
    except R1MegaError as e:
        return f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - what a rank that is not told gets
        return f"not told: {type(e).__name__}"
    return "built"


@pytest.mark.parametrize("which", ["tokenizer", "corpus"])
def test_a_failed_build_is_reported_by_every_rank(tmp_path, which):
    """Rank 0 builds; a build it cannot do (a file where the corpus directory goes; a damaged tokenizer)
    left the other ranks at the barrier, to die of gloo's 'Connection closed by peer' (a traceback under
    torchrun) or wait out its timeout. Every rank now raises the same named error."""
    from spawn_cases import run_ranks

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "addition-64-v384").write_text("mine")
    results = run_ranks(_resolve_on_rank, 2, str(cache), which)
    assert all(r.startswith("ConfigError: config error at 'data.cache_dir'") for r in results), results
    assert (cache / "addition-64-v384").read_text() == "mine"


def test_a_build_killed_while_training_the_tokenizer_leaves_no_temporaries_for_long(tmp_path):
    """kill -9 while the corpus's tokenizer trains: its temporary files stay (no `finally` runs); the next
    build removes those of dead processes, only the names it writes, and builds the corpus."""
    import signal
    import subprocess
    import sys

    cache = str(tmp_path / "cache")
    killed = ("import os, signal\n"
              "from r1mega.config import DataConfig\n"
              "from r1mega.data import synthetic, tokenizer\n"
              "real = tokenizer._train_spm\n"
              "def train(*args):\n"
              "    real(*args)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)  # the files are written, not yet renamed\n"
              "tokenizer._train_spm = train\n"
              f"synthetic.resolve_data(DataConfig(synthetic='addition', synthetic_docs=64, cache_dir={cache!r}), "
              "'pretrain', 384)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": root})
    assert child.wait(timeout=120) == -signal.SIGKILL
    corpus = synthetic._corpus_dir(DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=cache), 384)
    dead = {f".tokenizer.tmp-{child.pid}.model", f".tokenizer.tmp-{child.pid}.vocab"}
    assert set(os.listdir(corpus)) >= dead and "DONE" not in os.listdir(corpus)
    kept = {f".tokenizer.tmp-{os.getppid()}.model",  # a live process's (this one's parent)
            f".tokenizer.tmp-{child.pid}.model.bak", f".other.tmp-{child.pid}.model", "notes.tmp-1"}  # not its names
    for name in kept:
        with open(os.path.join(corpus, name), "w") as f:
            f.write("x")
    synthetic.resolve_data(DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=cache), "pretrain", 384)
    left = set(os.listdir(corpus))
    assert not left & dead and left >= kept | {"DONE", "tokenizer.model", "tokenizer.vocab"}
