"""Hostile probes of `r1mega-convert export` on damaged checkpoints: it checks a trainer checkpoint
as a resume does (manifest.json), and names a truncated piece file instead of a traceback."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from cli_in_process import run_main
from r1mega.cli import main
from test_tools_convert_out import _cli
from test_tools_fp8 import _tensors, write_hf
from tools import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step tiny pretraining run saving at both steps (a real trainer checkpoint, with its manifest)."""
    root = tmp_path_factory.mktemp("run")
    r = run_main(main, ["pretrain", "--config", os.path.join(ROOT, "configs/tiny/pretrain.yaml"), "train.steps=2",
                        "train.save_interval=1", f"train.run_dir={root / 'run'}", f"data.cache_dir={root / 'data'}",
                        "data.synthetic_docs=200", "model.num_layers=2"], cwd=root)  # the trainer, in this process
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run" / "checkpoints"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["another step's rank files", "edited meta.json"])
def test_export_refuses_what_a_resume_refuses(tmp_path, run_dir, damage):
    """Before: exported step 1's weights under step 2's name (or an edited meta.json) without a word,
    though the trainer falls back from that checkpoint as damaged."""
    ckpt = _copy(run_dir / "step_00000002", tmp_path / "step_00000002")
    if damage == "edited meta.json":
        meta = json.loads((ckpt / "meta.json").read_text())
        meta["step"] = 7
        (ckpt / "meta.json").write_text(json.dumps(meta))
        culprit = "meta.json"
    else:
        for name in ("rank00000.json", "rank00000.safetensors"):
            shutil.copy(run_dir / "step_00000001" / name, ckpt / name)
        culprit = "rank00000"
    r = _cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert culprit in r.stderr and "manifest.json" in r.stderr
    assert not (tmp_path / "hf").exists()
    convert.do_export(str(run_dir / "step_00000002"), str(tmp_path / "good"))  # the undamaged one exports
    assert (tmp_path / "good" / "config.json").exists()


def test_export_names_a_truncated_piece_file(tmp_path):
    """A converted checkpoint (no manifest) with a truncated part file: `error:` naming the file, exit 2
    (was a SafetensorError traceback)."""
    hf = write_hf(tmp_path / "src", _tensors())
    ckpt = tmp_path / "ckpt"
    convert.do_import(hf, str(ckpt))
    part = ckpt / "part00000.safetensors"
    with open(part, "r+b") as f:
        f.truncate(3000)
    r = _cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(part) in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "src"]


def test_tokenizer_dir_is_checked_and_not_mixed(tmp_path):
    """--tokenizer-dir that does not exist (a typo) or holds no tokenizer: a named error, nothing written
    (was ignored: the import's tokenizer went out instead). A tokenizer dir without a chat template gets
    none from the checkpoint's other tokenizer (was: the import's chat_template.jinja and
    tokenizer_config.json joined the new tokenizer.json)."""
    hf = write_hf(tmp_path / "src", _tensors())
    (tmp_path / "src" / "tokenizer.json").write_text('{"old": true}')
    (tmp_path / "src" / "tokenizer_config.json").write_text('{"old": true}')
    (tmp_path / "src" / "chat_template.jinja").write_text("old template")
    ckpt = tmp_path / "ckpt"
    convert.do_import(hf, str(ckpt))
    for bad in (tmp_path / "typo", tmp_path / "src" / "model-00001-of-00002.safetensors"):
        with pytest.raises(convert.ConvertError, match="--tokenizer-dir"):
            convert.do_export(str(ckpt), str(tmp_path / "out"), tokenizer_dir=str(bad))
        assert not (tmp_path / "out").exists()
    new = tmp_path / "newtok"
    new.mkdir()
    (new / "tokenizer.json").write_text('{"new": true}')
    convert.do_export(str(ckpt), str(tmp_path / "out"), tokenizer_dir=str(new))
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"new": true}'
    assert not (tmp_path / "out" / "chat_template.jinja").exists()
    assert not (tmp_path / "out" / "tokenizer_config.json").exists()
    convert.do_export(str(ckpt), str(tmp_path / "out2"))  # without it: the checkpoint's own, complete
    assert (tmp_path / "out2" / "chat_template.jinja").read_text() == "old template"


def test_export_of_a_run_directory_says_which_checkpoint_to_give(tmp_path):
    """`--ckpt RUN` or `--ckpt RUN/checkpoints` said only "RUN/meta.json: missing"."""
    (tmp_path / "run" / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000002")
    for ckpt in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        r = _cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "--ckpt" in r.stderr and "step_NNNNNNNN" in r.stderr
        assert not (tmp_path / "hf").exists()
