"""Hostile probes of exporting a DeepSeek model with an MTP layer. DeepSeek's format repeats the
embedding and the head inside the MTP layer (model.layers.N.embed_tokens / shared_head.head),
where MTP loaders of that format read them; r1mega's MTP shares the main model's, so a trained
checkpoint holds neither, and its export wrote an MTP layer without them. An import still goes
out exactly as it came in."""
from __future__ import annotations

import pytest
import torch

from test_tools_export_checks import run_dir  # noqa: F401  (a real trainer checkpoint, MTP layer included)
from test_tools_fp8 import _tensors, read_hf, write_hf
from tools import convert

MTP = "model.layers.2."  # the fixture's CONFIG: 2 layers, 1 MTP layer


@pytest.mark.slow
def test_a_trained_checkpoint_exports_the_mtp_copies(tmp_path, run_dir):  # noqa: F811
    convert.do_export(str(run_dir / "step_00000002"), str(tmp_path / "out"))
    back = read_hf(tmp_path / "out")
    mtp = "model.layers.2."  # the run: model.num_layers=2, one MTP layer
    assert torch.equal(back[mtp + "embed_tokens.weight"], back["model.embed_tokens.weight"])
    assert torch.equal(back[mtp + "shared_head.head.weight"], back["lm_head.weight"])
    convert.do_import(str(tmp_path / "out"), str(tmp_path / "again"))  # and it imports back as it is
    convert.do_export(str(tmp_path / "again"), str(tmp_path / "out2"))
    again = read_hf(tmp_path / "out2")
    assert sorted(again) == sorted(back) and all(torch.equal(again[k], back[k]) for k in back)


def test_an_import_round_trips_with_or_without_the_copies(tmp_path):
    tensors = _tensors()
    assert MTP + "eh_proj.weight" in tensors and MTP + "embed_tokens.weight" not in tensors
    with_copies = {**tensors, MTP + "embed_tokens.weight": tensors["model.embed_tokens.weight"].clone(),
                   MTP + "shared_head.head.weight": tensors["lm_head.weight"].clone()}
    for name, source in (("without", tensors), ("with", with_copies)):
        convert.do_import(write_hf(tmp_path / name, source), str(tmp_path / f"{name}.ckpt"), fp8="keep")
        convert.do_export(str(tmp_path / f"{name}.ckpt"), str(tmp_path / f"{name}.out"))
        assert sorted(read_hf(tmp_path / f"{name}.out")) == sorted(source), name


def test_no_copies_without_the_mtp_layer(tmp_path):
    """A checkpoint without the MTP layer (transformers saves none) gets no half MTP layer."""
    tensors = {k: t for k, t in _tensors().items() if not k.startswith(MTP)}
    convert.do_import(write_hf(tmp_path / "hf", tensors), str(tmp_path / "ckpt"))
    convert.do_export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    assert not any(k.startswith(MTP) for k in read_hf(tmp_path / "out"))
