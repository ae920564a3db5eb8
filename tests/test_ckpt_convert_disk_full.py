"""Hostile probe: `r1mega-convert` on a full disk (simulated by RLIMIT_FSIZE, the largest file a
process may write) ends in `error: writing FILE failed`, exit 2, with nothing published and no
temporary directory left, whichever file hits the limit (was: a traceback for every file but the
safetensors parts: piece listings, meta.json, the index, config.json, tokenizer files, the marker;
the tests fill the limit with a tokenizer file and with the marker)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from test_tools_fp8 import _tensors, write_hf
from tools import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """An FP8 model, its tokenizer.json larger than any of its tensors (so a limit can admit every
    part but not it), imported; and the largest safetensors part an export writes one tensor each."""
    root = tmp_path_factory.mktemp("src")
    hf = write_hf(root / "hf", _tensors())
    with open(os.path.join(hf, "tokenizer.json"), "w") as f:
        json.dump({"padding": "x" * 200_000}, f)
    convert.do_import(hf, str(root / "ckpt"))
    convert.do_export(str(root / "ckpt"), str(root / "free"), shard_bytes=1)
    sizes = {n: os.path.getsize(os.path.join(root / "free", n)) for n in os.listdir(root / "free")}
    largest = max(v for n, v in sizes.items() if n.endswith(".safetensors"))
    assert sizes["tokenizer.json"] > largest + 1
    return hf, str(root / "ckpt"), largest


def _cli(limit: int, *args):
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("R1MEGA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tools.convert", *args, "--shard-size", "1e-9"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, preexec_fn=cap)


def _named_and_nothing_left(r, tmp_path):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: writing" in r.stderr and "failed (File too large)" in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []  # nothing published, no temporary directory left


def test_export_whose_tokenizer_does_not_fit_is_a_named_error(tmp_path, src):
    _, ckpt, largest = src
    _named_and_nothing_left(_cli(largest + 1, "export", "--ckpt", ckpt, "--out", str(tmp_path / "out")), tmp_path)


def test_import_whose_tokenizer_does_not_fit_is_a_named_error(tmp_path, src):
    hf, _, largest = src
    _named_and_nothing_left(_cli(largest + 1, "import", "--hf-dir", hf, "--out", str(tmp_path / "out")), tmp_path)


def test_import_with_no_room_for_the_marker_is_a_named_error(tmp_path, src):
    hf, _, _ = src
    _named_and_nothing_left(_cli(10, "import", "--hf-dir", hf, "--out", str(tmp_path / "out")), tmp_path)
