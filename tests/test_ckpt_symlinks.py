"""Hostile probe: symlinks planted at the temporary names a checkpoint save writes through
(`.latest.tmp`, `.step_NNNNNNNN.tmp`, any `write_text_atomic` target's `.tmp`) point at a user's
file or directory. Saving must write its own files and leave the user's as they were (was: the
user's file was overwritten with the step name and `latest` became that symlink; a planted
step directory link stopped every save with a FileExistsError)."""
from __future__ import annotations

import os

import pytest

import r1mega.train.checkpoint as ckpt
from r1mega.atomic_io import write_text_atomic
from r1mega.config import Config
from r1mega.parallel.layout import single_process_state
from r1mega.train.setup import build_chunks


@pytest.fixture(scope="module")
def chunks():
    return build_chunks(Config(), single_process_state())


def test_a_save_never_writes_through_planted_symlinks(tmp_path, chunks):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(str(root), 1, chunks, None, single_process_state(), {})
    user_file, user_dir = tmp_path / "notes.txt", tmp_path / "mine"
    user_file.write_text("precious")
    user_dir.mkdir()
    (user_dir / "a").write_text("keep")
    os.symlink(user_file, root / ".latest.tmp")
    os.symlink(user_dir, root / ".step_00000002.tmp")
    ckpt.save_checkpoint(str(root), 2, chunks, None, single_process_state(), {})
    assert user_file.read_text() == "precious"
    assert os.listdir(user_dir) == ["a"] and (user_dir / "a").read_text() == "keep"
    assert not os.path.islink(root / "latest") and (root / "latest").read_text() == "step_00000002"
    assert ckpt.latest_checkpoint(str(root)) == str(root / "step_00000002")
    ckpt.load_checkpoint(str(root / "step_00000002"), chunks, None, single_process_state())  # manifest holds


def test_write_text_atomic_never_writes_through_a_planted_symlink(tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    os.symlink(user_file, tmp_path / "report.json.tmp")
    write_text_atomic(str(tmp_path / "report.json"), "{}")
    assert user_file.read_text() == "precious" and (tmp_path / "report.json").read_text() == "{}"
    assert not os.path.islink(tmp_path / "report.json")
