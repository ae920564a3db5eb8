"""Hostile probe: `r1mega-convert` killed (SIGKILL) at points of its run, then rerun on the same
--out. The rerun removes what the dead run left beside --out (its hidden `.OUT.converting-*`
directory; was: left forever, one per interrupted run), puts the previous result back when the run
died between moving it aside and moving the new one in (was: --out gone, the old result hidden
as `.OUT.replaced-*`), and never touches a live run's temporary directory or anything not its own."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest

from r1mega import output_dir
from test_tools_fp8 import _tensors, write_hf
from tools import convert


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return write_hf(tmp_path_factory.mktemp("src") / "hf", _tensors())


def _killed_at(point: str, hf: str, out: str, overwrite: bool = False) -> None:
    """In a child process: import, SIGKILLed at `point` ('publish': when the result is complete,
    'between_renames': after --out was moved aside, before the new result was moved in)."""
    if point == "publish":
        convert._publish = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    elif point == "deleting_replaced":
        real_rmtree = convert.shutil.rmtree

        def rmtree(path, *a, **k):
            if ".replaced-" in str(path):
                os.remove(os.path.join(path, "meta.json"))  # part of it deleted, then killed
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rmtree(path, *a, **k)

        convert.shutil.rmtree = rmtree
    else:
        real = os.rename

        def rename(a, b):
            if ".replaced-" not in str(b) and ".converting-" in str(a):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(a, b)

        os.rename = rename
    convert.do_import(hf, out, overwrite=overwrite)


def _run_killed(point, hf, out, overwrite=False):
    p = multiprocessing.get_context("fork").Process(target=_killed_at, args=(point, hf, str(out), overwrite))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL


def _hidden(tmp_path):
    return sorted(e for e in os.listdir(tmp_path) if e.startswith("."))


def test_a_rerun_removes_the_temporary_directory_of_a_killed_run(tmp_path, hf, capsys):
    out = tmp_path / "ckpt"
    _run_killed("publish", hf, out)
    left = _hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(".ckpt.converting-")  # what a kill leaves
    convert.do_import(hf, str(out))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert left[0] in capsys.readouterr().err  # said what it removed


def test_a_run_killed_while_replacing_gets_the_previous_result_back(tmp_path, hf):
    out = tmp_path / "ckpt"
    convert.do_import(hf, str(out))
    before = sorted(os.listdir(out))
    _run_killed("between_renames", hf, out, overwrite=True)
    assert not out.exists() and len(_hidden(tmp_path)) == 2  # moved aside, the new one not yet in
    with pytest.raises(convert.ConvertError, match="exists and is not empty"):
        convert.do_import(hf, str(out))  # the previous result is back, so without --overwrite: refused
    assert sorted(os.listdir(out)) == before and _hidden(tmp_path) == []
    convert.do_import(hf, str(out), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_run_killed_while_deleting_the_replaced_result(tmp_path, hf):
    """The new result was published; the old one, half deleted, is removed by the rerun."""
    out = tmp_path / "ckpt"
    convert.do_import(hf, str(out))
    _run_killed("deleting_replaced", hf, out, overwrite=True)
    left = _hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(".ckpt.replaced-") and (out / "meta.json").exists()
    convert.do_import(hf, str(out), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_live_runs_and_foreign_directories_are_left_alone(tmp_path, hf):
    out = tmp_path / "ckpt"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        own = {"command": "r1mega-convert import", "pid": live.pid, "host": os.uname().nodename,
               "start": output_dir._start_time(live.pid)}
        for name, marker in [(".ckpt.converting-0123456789ab", own),  # a run still going
                             (".ckpt.converting-ba9876543210", None),  # no marker: not provably ours
                             (".ckpt.converting-aaaaaaaaaaaa", {**own, "pid": 2 ** 22 + 7})]:  # dead, but
            (tmp_path / name).mkdir()
            if marker:
                (tmp_path / name / output_dir.MARKER).write_text(json.dumps(marker))
        (tmp_path / ".ckpt.converting-aaaaaaaaaaaa" / "my_notes.txt").write_text("mine")  # holds a user's file
        convert.do_import(hf, str(out))
        assert _hidden(tmp_path) == [".ckpt.converting-0123456789ab", ".ckpt.converting-aaaaaaaaaaaa",
                                     ".ckpt.converting-ba9876543210"]
        assert (tmp_path / ".ckpt.converting-aaaaaaaaaaaa" / "my_notes.txt").read_text() == "mine"
    finally:
        live.kill()
        live.wait()


def test_leftovers_that_cannot_be_removed_are_named_not_a_traceback(tmp_path, hf, monkeypatch, capsys):
    """A dead run's directory in a parent that refuses removal (read-only): a warning, then the
    conversion's own answer (was: the recovery's PermissionError traceback)."""
    out = tmp_path / "ckpt"
    _run_killed("publish", hf, out)

    def refuse(path, *a, **k):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(convert.shutil, "rmtree", refuse)
    convert.do_import(hf, str(out))
    assert "could not clean up after an interrupted r1mega-convert" in capsys.readouterr().err
    assert (out / "meta.json").exists()
