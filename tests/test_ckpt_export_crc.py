"""Hostile probe: `r1mega-convert export` of a checkpoint imported with `--fp8 keep` copies the
e4m3 weights and their block scales out as stored; a flipped byte in either must fail its CRC32
(named, nothing published) like every other tensor does, never go out silently."""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest

from r1mega.errors import CheckpointError
from test_tools_fp8 import SCALED, _tensors, write_hf
from tools import convert


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    hf = write_hf(root / "hf", _tensors())
    convert.do_import(hf, str(root / "ckpt"), fp8="keep")
    return root / "ckpt"


def _flip_payload_byte(ckpt, key: str) -> str:
    """Flip one bit of the first payload byte of checkpoint tensor `key`; returns the file."""
    for name in sorted(os.listdir(ckpt)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(ckpt, name)
        raw = bytearray(open(path, "rb").read())
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        if key in header:
            raw[8 + n + header[key]["data_offsets"][0]] ^= 0x01
            open(path, "wb").write(raw)
            return path
    raise AssertionError(key)


@pytest.mark.parametrize("key", [SCALED, SCALED + "_scale_inv"])
def test_a_flipped_byte_in_a_kept_fp8_tensor_fails_its_checksum_on_export(tmp_path, kept, key):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(kept, ckpt)
    file = _flip_payload_byte(ckpt, f"model/{key}")
    with pytest.raises(CheckpointError, match="checksum") as e:
        convert.do_export(str(ckpt), str(tmp_path / "out"))
    assert file in str(e.value) and key in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # nothing published, no temporary directory left
