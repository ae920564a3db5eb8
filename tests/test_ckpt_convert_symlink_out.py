"""Hostile probe: `r1mega-convert --out LINK` where LINK is a symlink to a directory (e.g.
`current -> exports/v1`). The result goes into the directory the link names and the link keeps
pointing at it (was: an empty target failed with 'could not move the finished result into place
(Not a directory)'; with --overwrite the link itself was replaced by the new directory, the old
link left renamed as `.LINK.replaced-*`, and the run reported 'Nothing was replaced', exit 2)."""
from __future__ import annotations

import os

import pytest

from test_tools_fp8 import _tensors, read_hf, write_hf
from tools import convert


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    hf = write_hf(root / "hf", _tensors())
    convert.do_import(hf, str(root / "ckpt"))
    return hf, str(root / "ckpt")


def test_import_into_a_link_to_an_empty_directory(tmp_path, ckpt):
    hf, _ = ckpt
    (tmp_path / "v1").mkdir()
    os.symlink("v1", tmp_path / "current")
    convert.do_import(hf, str(tmp_path / "current"))
    assert os.readlink(tmp_path / "current") == "v1" and (tmp_path / "v1" / "meta.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["current", "v1"]


def test_overwrite_through_a_link_replaces_its_target(tmp_path, ckpt):
    _, src = ckpt
    convert.do_export(src, str(tmp_path / "v1"))
    os.symlink("v1", tmp_path / "current")
    convert.do_export(src, str(tmp_path / "current"), overwrite=True, dtype="float32")
    assert os.readlink(tmp_path / "current") == "v1"
    assert read_hf(tmp_path / "v1")["model.embed_tokens.weight"].dtype == convert.torch.float32  # the new export
    assert sorted(os.listdir(tmp_path)) == ["current", "v1"]  # nothing renamed aside or left over


def test_a_dangling_link_is_named(tmp_path, ckpt):
    _, src = ckpt
    os.symlink("nowhere", tmp_path / "current")
    with pytest.raises(convert.ConvertError, match="is a symlink to .*nowhere, which is not a directory"):
        convert.do_export(src, str(tmp_path / "current"))
    assert sorted(os.listdir(tmp_path)) == ["current"]
