"""Hostile probe of `r1mega-convert export --dtype`: the tensors a family keeps in float32 stay
float32 (DeepSeek's routing bias, e_score_correction_bias, as DeepSeek's release stores it)."""
from __future__ import annotations

import os

import torch

from test_tools_fp8 import _tensors, read_hf, write_hf
from tools import convert


def test_export_bfloat16_keeps_the_routing_bias_in_float32(tmp_path):
    """Before: --dtype bfloat16 rounded the bias to 8 mantissa bits (1.001 -> 1.0), which moves
    experts across the top-k boundary; r1mega itself keeps it in float32 under bf16 training."""
    tensors = _tensors()
    biases = [k for k in tensors if k.endswith("e_score_correction_bias")]
    assert biases
    for k in biases:
        tensors[k] = 1.0 + 1e-3 * torch.arange(tensors[k].numel(), dtype=torch.float32)
    convert.do_import(write_hf(tmp_path / "hf", tensors), str(tmp_path / "ckpt"))
    convert.do_export(str(tmp_path / "ckpt"), str(tmp_path / "out"), dtype="bfloat16")
    back = read_hf(tmp_path / "out")
    for k in biases:
        assert back[k].dtype == torch.float32 and torch.equal(back[k], tensors[k]), k
    assert back["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert back["model.layers.0.mlp.gate_proj.weight"].dtype == torch.bfloat16
    assert os.path.exists(tmp_path / "out" / "config.json")


def test_export_float16_refuses_values_past_its_range(tmp_path):
    """Before: --dtype float16 wrote inf for a weight past 65504 (finite in the checkpoint), a model
    transformers then loads with inf logits; now the tensor and the range are named, nothing written."""
    tensors = _tensors()
    key = "model.embed_tokens.weight"  # bfloat16 here: its range holds 1e5
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = 1.0e5
    convert.do_import(write_hf(tmp_path / "hf", tensors), str(tmp_path / "ckpt"), dtype="float32")
    try:
        convert.do_export(str(tmp_path / "ckpt"), str(tmp_path / "out"), dtype="float16")
    except convert.ConvertError as e:
        assert f"tensor {key} holds values beyond float16's range" in str(e) and "99840" in str(e)
    else:
        raise AssertionError("exported inf")
    assert not os.path.exists(tmp_path / "out")
    convert.do_export(str(tmp_path / "ckpt"), str(tmp_path / "out"), dtype="bfloat16")  # in range there
    assert torch.isfinite(read_hf(tmp_path / "out")[key]).all()
