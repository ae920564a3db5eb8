"""Hostile probes of `r1mega-convert` on DeepSeek's FP8 block-scaled checkpoints.

The fixture is written directly with safetensors (no transformers model): every tensor the
config asks for, random, with the 2-D linears DeepSeek stores in e4m3 quantised as its release
does (128 x 128 blocks, ragged edges, `<name>_scale_inv` in float32), sharded with an index and
each scale in another shard than its weight.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tools import convert

BLOCK = 128
# what DeepSeek-V3/R1's release stores in e4m3: every attention and expert projection, the latent
# down-projection kv_a_proj_with_mqa included; the MTP layer's eh_proj, router, norms, embedding
# and head stay in high precision
CONFIG = {
    "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 160,
    "hidden_size": 64, "intermediate_size": 200, "moe_intermediate_size": 136, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1, "q_lora_rank": 32,
    "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "max_position_embeddings": 64, "num_nextn_predict_layers": 1, "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True, "hidden_act": "silu",
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [BLOCK, BLOCK]},
}


def _official_fp8(key: str, shape) -> bool:
    return len(shape) == 2 and key.endswith(("_proj.weight", "_proj_with_mqa.weight")) \
        and not key.endswith("eh_proj.weight")


def _quantize(w: torch.Tensor):
    rows, cols = w.shape
    scale = torch.empty(-(-rows // BLOCK), -(-cols // BLOCK))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].float()
            s = float(blk.abs().max()) / 448.0 or 1.0
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    out = {}
    for key, shape in convert.expected_tensors(CONFIG).items():
        w = (torch.randn(shape) * 0.05).to(torch.bfloat16)
        if _official_fp8(key, shape):
            out[key], out[key + "_scale_inv"] = _quantize(w)
        else:
            out[key] = w
    return out


def write_hf(path, tensors: dict[str, torch.Tensor], config=CONFIG) -> str:
    """Two shards, each scale in the other shard from its weight."""
    os.makedirs(path)
    keys = sorted(k for k in tensors if not k.endswith("_scale_inv"))
    shards = [{}, {}]
    where = {}
    for i, k in enumerate(keys):
        shards[i % 2][k] = tensors[k]
        where[k] = f"model-{i % 2 + 1:05d}-of-00002.safetensors"
        if k + "_scale_inv" in tensors:
            shards[1 - i % 2][k + "_scale_inv"] = tensors[k + "_scale_inv"]
            where[k + "_scale_inv"] = f"model-{2 - i % 2:05d}-of-00002.safetensors"
    for k in tensors:  # scales without a weight (hostile inputs)
        if k.endswith("_scale_inv") and k not in where:
            shards[0][k] = tensors[k]
            where[k] = "model-00001-of-00002.safetensors"
    for i, shard in enumerate(shards):
        save_file(shard, os.path.join(path, f"model-{i + 1:05d}-of-00002.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": where}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


def read_hf(path) -> dict[str, torch.Tensor]:
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        where = json.load(f)["weight_map"]
    out = {}
    for k, name in where.items():
        with safe_open(os.path.join(path, name), "pt") as f:
            out[k] = f.get_tensor(k)
    return out


def test_export_fp8_blocks_quantises_what_deepseeks_release_does(tmp_path):
    """import (dequantised) -> export --fp8-blocks gives e4m3 + scale exactly for the tensors
    DeepSeek's checkpoint holds in e4m3: kv_a_proj_with_mqa too, the MTP eh_proj (bf16 there) not.
    Before: kv_a_proj_with_mqa went out in high precision and eh_proj as e4m3 with a scale, a
    layout FP8 loaders of DeepSeek's format reject."""
    tensors = _tensors()
    hf = write_hf(tmp_path / "hf", tensors)
    convert.do_import(hf, str(tmp_path / "ckpt"))
    convert.do_export(str(tmp_path / "ckpt"), str(tmp_path / "out"), fp8_blocks=True)
    back = read_hf(tmp_path / "out")
    assert sorted(back) == sorted(tensors)
    fp8 = sorted(k for k, t in back.items() if t.dtype == torch.float8_e4m3fn)
    assert fp8 == sorted(k for k, t in tensors.items() if t.dtype == torch.float8_e4m3fn)
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa.weight" in fp8
    assert back["model.layers.2.eh_proj.weight"].dtype != torch.float8_e4m3fn


def test_keep_round_trip_is_bitwise(tmp_path):
    tensors = _tensors()
    hf = write_hf(tmp_path / "hf", tensors)
    convert.do_import(hf, str(tmp_path / "ckpt"), fp8="keep")
    convert.do_export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    back = read_hf(tmp_path / "out")
    assert sorted(back) == sorted(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype, k
        assert torch.equal(back[k].view(torch.uint8), t.view(torch.uint8)), k


SCALED = "model.layers.1.mlp.experts.2.down_proj.weight"  # (64, 136): two column blocks, the second ragged


@pytest.mark.parametrize("fp8", ["dequant", "keep"])
@pytest.mark.parametrize("damage", ["nan", "inf", "shape", "missing"])
def test_damaged_scales_are_refused_by_name_before_anything_is_written(tmp_path, fp8, damage):
    """A scale that is NaN/Inf, of the wrong block grid, or absent: a ConvertError naming the
    tensor, and no --out. Before: dequant imported NaN/Inf scales silently (NaN weights), a wrong
    grid raised a bare ValueError (traceback), and `--fp8 keep` published all three; a missing
    scale under keep was read back as raw e4m3 values, unscaled."""
    tensors = _tensors()
    scale = SCALED + "_scale_inv"
    if damage == "nan":
        tensors[scale] = tensors[scale].clone()
        tensors[scale][0, 1] = float("nan")
    elif damage == "inf":
        tensors[scale] = tensors[scale].clone()
        tensors[scale][0, 0] = float("inf")
    elif damage == "shape":
        tensors[scale] = torch.ones(2, 2)
    else:
        del tensors[scale]
    hf = write_hf(tmp_path / "hf", tensors)
    out = tmp_path / "ckpt"
    with pytest.raises(convert.ConvertError) as e:
        convert.do_import(hf, str(out), fp8=fp8)
    assert SCALED in str(e.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary directory left behind


def test_a_scale_without_an_fp8_weight_is_refused(tmp_path):
    """A `_scale_inv` beside a weight stored in bf16 (or beside no weight): which is meant cannot be
    told, so it is named instead of dropped (dequant) or carried along (keep)."""
    tensors = _tensors()
    tensors["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(200, 64, dtype=torch.bfloat16)
    tensors["model.layers.0.mlp.gate_proj.weight_scale_inv"] = torch.ones(2, 1)
    hf = write_hf(tmp_path / "hf", tensors)
    with pytest.raises(convert.ConvertError, match="model.layers.0.mlp.gate_proj.weight_scale_inv"):
        convert.do_import(hf, str(tmp_path / "ckpt"))
    tensors = _tensors()
    tensors["model.layers.0.mlp.nonexistent.weight_scale_inv"] = torch.ones(1, 1)
    hf = write_hf(tmp_path / "hf2", tensors)
    with pytest.raises(convert.ConvertError, match="model.layers.0.mlp.nonexistent.weight_scale_inv"):
        convert.do_import(hf, str(tmp_path / "ckpt2"), fp8="keep")


def test_keep_and_dequant_load_the_same_weights(tmp_path):
    """The trainer's reader dequantises a kept FP8 checkpoint to exactly what an import with
    `--fp8 dequant --dtype float32` stored (ragged edge blocks included)."""
    from r1mega.models.weights import PieceReader

    hf = write_hf(tmp_path / "hf", _tensors())
    convert.do_import(hf, str(tmp_path / "keep"), fp8="keep")
    convert.do_import(hf, str(tmp_path / "deq"), fp8="dequant", dtype="float32")
    keep, deq = PieceReader(str(tmp_path / "keep")), PieceReader(str(tmp_path / "deq"))
    for key in (SCALED, "model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"):
        shape = tuple(deq.pieces["model/" + key][0][1]["shape"])
        a = keep.read(key, shape, None, 0, 1)
        b = deq.read(key, shape, None, 0, 1)
        assert torch.equal(a, b), key


def test_another_block_size_is_refused_by_key(tmp_path):
    """A checkpoint quantised in 64 x 64 blocks: its config says so; the 128-block reader would
    misread the scales, so the key is named (before: only a confusing scale-shape mismatch)."""
    config = {**CONFIG, "quantization_config": {**CONFIG["quantization_config"], "weight_block_size": [64, 64]}}
    hf = write_hf(tmp_path / "hf", _tensors(), config)
    with pytest.raises(convert.ConvertError, match="weight_block_size"):
        convert.do_import(hf, str(tmp_path / "ckpt"))
    assert not (tmp_path / "ckpt").exists()
    from r1mega.errors import CheckpointError
    from r1mega.models.weights import SafetensorsDir

    with pytest.raises(CheckpointError, match="weight_block_size"):  # generate/verify-hf on the HF directory
        SafetensorsDir(hf)


def test_verify_when_transformers_cannot_load_the_checkpoint_is_named(tmp_path, monkeypatch):
    """`import --verify` (and verify-hf) on an FP8 checkpoint where transformers cannot load FP8 (here:
    no accelerate) ended in transformers' ImportError traceback; now `error:` naming --hf-dir, and
    nothing is published."""
    import transformers

    from r1mega.errors import R1MegaError

    def cannot(*args, **kwargs):
        raise ImportError("Loading an FP8 quantized model requires accelerate")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", cannot)
    hf = write_hf(tmp_path / "hf", _tensors())
    with pytest.raises(R1MegaError, match="--hf-dir.*ImportError: Loading an FP8"):
        convert.do_import(hf, str(tmp_path / "ckpt"), verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
