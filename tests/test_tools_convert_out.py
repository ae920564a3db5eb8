"""Hostile probes of `r1mega-convert`'s --out: nothing it did not write is removed, bad paths are
named errors (exit 2, no traceback), and nothing half-done is left behind."""
from __future__ import annotations

import os

import pytest

from cli_in_process import run_main
from test_tools_fp8 import _tensors, write_hf
from tools import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return write_hf(tmp_path_factory.mktemp("src") / "hf", _tensors())


def _cli(*args):
    return run_main(convert.main, args, cwd=ROOT)  # `r1mega-convert ARGS` in this process


def test_out_under_a_file_is_a_named_error(tmp_path, hf):
    """--out inside a path that is a file: `error: ...` naming it, exit 2 (was a NotADirectoryError
    traceback, exit 1)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    r = _cli("import", "--hf-dir", hf, "--out", str(blocker / "ckpt"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and str(blocker) in r.stderr
    assert blocker.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["a_file"]


def test_overwrite_keeps_files_the_tool_did_not_write(tmp_path, hf):
    """A user's file added to an earlier import's --out survives `--overwrite`: the run is refused,
    naming it (was: the whole directory was replaced and the file deleted)."""
    out = tmp_path / "ckpt"
    convert.do_import(hf, str(out))
    (out / "NOTES.md").write_text("my notes")
    with pytest.raises(convert.ConvertError, match="NOTES.md"):
        convert.do_import(hf, str(out), overwrite=True)
    assert (out / "NOTES.md").read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left
    os.remove(out / "NOTES.md")
    convert.do_import(hf, str(out), overwrite=True)  # its own files alone: replaced
    assert (out / "meta.json").exists() and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_directory_that_appears_while_converting_is_never_replaced(tmp_path, hf, monkeypatch):
    """--out was free when the import began, but by the time it is done another process (or the
    user) has put files there: they are kept and the run fails naming --out (was: renamed aside and
    deleted, without --overwrite)."""
    out = tmp_path / "ckpt"
    real = convert._import_into

    def slow_import(tmp, *args):
        meta = real(tmp, *args)
        out.mkdir()
        (out / "theirs.bin").write_text("not the tool's")
        return meta

    monkeypatch.setattr(convert, "_import_into", slow_import)
    with pytest.raises(convert.ConvertError, match=str(out)):
        convert.do_import(hf, str(out))
    assert sorted(os.listdir(out)) == ["theirs.bin"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_export_overwrite_keeps_a_users_readme(tmp_path, hf):
    """The same for export: a README.md added to an exported model directory survives --overwrite."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf_out"
    convert.do_import(hf, str(ckpt))
    convert.do_export(str(ckpt), str(out))
    (out / "README.md").write_text("model card")
    with pytest.raises(convert.ConvertError, match="README.md"):
        convert.do_export(str(ckpt), str(out), overwrite=True)
    assert (out / "README.md").read_text() == "model card"
