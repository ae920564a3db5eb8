"""Hostile probes of a Hugging Face directory's model.safetensors.index.json: a malformed
weight_map is named (file and entry), never a traceback, in r1mega-convert and in every command
that reads an HF directory (SafetensorsDir)."""
from __future__ import annotations

import json
import os

import pytest

from r1mega.errors import CheckpointError
from r1mega.models.weights import SafetensorsDir
from test_tools_convert_out import _cli
from test_tools_fp8 import _tensors, write_hf

BAD_MAPS = {
    "a list": [],
    "a string": "model-00001-of-00002.safetensors",
    "a list as file": {"model.embed_tokens.weight": ["model-00001-of-00002.safetensors"]},
    "null file": {"model.embed_tokens.weight": None},
    "a path outside": {"model.embed_tokens.weight": "../elsewhere/model.safetensors"},
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return write_hf(tmp_path_factory.mktemp("src") / "hf", _tensors())


@pytest.mark.parametrize("what", sorted(BAD_MAPS))
def test_malformed_weight_map_is_named(tmp_path, hf, what):
    """Before: AttributeError / TypeError tracebacks (exit 1), and a path outside the directory was read."""
    bad = tmp_path / "hf"
    bad.mkdir()
    for name in os.listdir(hf):
        os.symlink(os.path.join(hf, name), bad / name)
    os.remove(bad / "model.safetensors.index.json")
    (bad / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": BAD_MAPS[what]}))
    r = _cli("import", "--hf-dir", str(bad), "--out", str(tmp_path / "ckpt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "model.safetensors.index.json" in r.stderr
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(CheckpointError, match="weight_map"):
        SafetensorsDir(str(bad))
