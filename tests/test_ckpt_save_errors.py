"""Hostile probes of a checkpoint save that cannot write: every failure is a CheckpointError naming
the path (was: an OSError traceback when the step's temporary directory could not be made, e.g. a
read-only or replaced run directory), raised on every rank together (was: the rank that failed left
and the others waited for it in a barrier), and `latest` keeps naming the previous checkpoint."""
from __future__ import annotations

import os

import pytest

import r1mega.train.checkpoint as ckpt
from r1mega.config import Config
from r1mega.errors import CheckpointError
from r1mega.parallel.layout import single_process_state
from r1mega.train.setup import build_chunks
from spawn_cases import run_ranks


@pytest.fixture(scope="module")
def chunks():
    return build_chunks(Config(), single_process_state())


def test_a_run_directory_that_cannot_hold_the_save_is_named(tmp_path, chunks):
    """The checkpoints root lies under a file (a run directory replaced meanwhile): named, not a
    traceback, and the file is left as it was."""
    blocker = tmp_path / "run"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match=rf"cannot create {blocker}/checkpoints/\.step_00000001\.tmp "
                                              r".*step 1 was not saved"):
        ckpt.save_checkpoint(str(blocker / "checkpoints"), 1, chunks, None, single_process_state(), {})
    assert blocker.read_text() == "not a directory"


def test_a_failed_publish_is_named(tmp_path, chunks, monkeypatch):
    """An OSError while publishing (here renaming the finished directory into place) is a
    CheckpointError, `latest` untouched."""
    root = str(tmp_path / "c")
    ckpt.save_checkpoint(root, 1, chunks, None, single_process_state(), {})

    def failing(a, b):
        raise OSError(5, "Input/output error", a)

    monkeypatch.setattr(ckpt.os, "rename", failing)
    with pytest.raises(CheckpointError, match="publishing .*step_00000002 failed \\(Input/output error"):
        ckpt.save_checkpoint(root, 2, chunks, None, single_process_state(), {})
    assert open(os.path.join(root, "latest")).read() == "step_00000001"


@pytest.mark.parametrize("full_rank", [1, 0])
def test_a_full_disk_on_one_rank_stops_every_rank_with_its_error(tmp_path, full_rank):
    root = str(tmp_path / "c")
    errors = run_ranks(_worker(), 2, root, full_rank)
    assert all(f"rank {full_rank}: writing {root}/.step_00000001.tmp/rank0000{full_rank}.safetensors failed" in e
               and "step 1 was not saved" in e for e in errors), errors
    assert not os.path.exists(os.path.join(root, "latest")) and not os.path.exists(os.path.join(root, "step_00000001"))


def _worker():
    from probe_ckpt_save_workers import save_with_one_rank_full

    return save_with_one_rank_full
