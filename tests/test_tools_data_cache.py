"""Hostile probes of the synthetic corpus cache (data.cache_dir), shared by every run that names
it: runs on different run directories started together must not build it over each other."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from r1mega.config import ConfigError, DataConfig
from r1mega.data import prepare


def _resolve(cache: str, barrier, counts: str, errors) -> None:
    real = prepare._build

    def slow_build(*args):
        with open(counts, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # the other runs reach their DONE check meanwhile
        return real(*args)

    prepare._build = slow_build
    barrier.wait()
    try:
        prepare.resolve_data(DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=cache), "pretrain", 384)
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
        prepare.resolve_data(DataConfig(synthetic="addition", synthetic_docs=64, cache_dir=str(blocker / "cache")),
                             "pretrain", 384)
    assert blocker.read_text() == "mine"
