"""r1mega-convert: bit-exact round trips, FP8 block scales, checks before writing, verify after import."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1mega.models.fp8 import FP8, dequantize, quantize
from tiny_hf import add_mtp_layer, make_hf_model
from tools.convert import ConvertError, do_export, do_import, main as convert_main


def load_dir(path):
    out = {}
    for f in glob.glob(os.path.join(path, "*.safetensors")):
        out.update(load_file(f))
    return out


def tiny_dense(kind, path):
    import transformers

    cls = {"qwen2": "Qwen2", "llama": "Llama"}[kind]
    cfg = getattr(transformers, f"{cls}Config")(vocab_size=96, hidden_size=32, intermediate_size=48,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    getattr(transformers, f"{cls}ForCausalLM")(cfg).to(torch.bfloat16).save_pretrained(path)


@pytest.mark.parametrize("kind", ["v3_mtp", "v2_lite", "qwen2", "llama"])
def test_round_trip_is_bit_exact(tmp_path, kind):
    src = str(tmp_path / "hf")
    if kind == "v3_mtp":
        make_hf_model("DeepseekV3", n_group=2, topk_group=1).to(torch.bfloat16).save_pretrained(src)
        add_mtp_layer(src)
    elif kind == "v2_lite":
        make_hf_model("DeepseekV2", q_lora_rank=None, n_shared_experts=2).save_pretrained(src)  # float32
    else:
        tiny_dense(kind, src)
    with open(os.path.join(src, "tokenizer.json"), "w") as f:
        f.write("{}")
    # small shard size: several input-side parts and output files, as with real checkpoints
    assert convert_main(["import", "--hf-dir", src, "--out", str(tmp_path / "ck"), "--shard-size", "0.000005"]) == 0
    assert len(glob.glob(str(tmp_path / "ck" / "part*.safetensors"))) > 1
    assert convert_main(["export", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "out"),
                         "--shard-size", "0.000005"]) == 0
    a, b = load_dir(src), load_dir(str(tmp_path / "out"))
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    index = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))
    assert set(index["weight_map"]) == set(a) and os.path.exists(tmp_path / "out" / "tokenizer.json")


def test_export_loads_in_transformers_with_identical_logits(tmp_path):
    import transformers

    src = str(tmp_path / "hf")
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(src)
    do_import(src, str(tmp_path / "ck"))
    do_export(str(tmp_path / "ck"), str(tmp_path / "out"))
    ids = torch.randint(0, 128, (2, 12))
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(ids).logits
    new = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)(ids).logits
    assert torch.equal(ref, new)


def fp8_checkpoint(tmp_path):
    """A tiny DeepSeek-V3 in DeepSeek's FP8 format: *_proj weights e4m3 + 128x128 scale_inv,
    with shapes that leave ragged edge blocks (hidden 160 and 200-wide projections)."""
    src = str(tmp_path / "hf")
    make_hf_model("DeepseekV3", hidden_size=160, intermediate_size=200, moe_intermediate_size=136,
                  q_lora_rank=132, n_group=2, topk_group=1, num_hidden_layers=2).save_pretrained(src)
    sd = load_file(os.path.join(src, "model.safetensors"))
    original = {k: v.clone() for k, v in sd.items()}
    for k in list(sd):
        if k.endswith("proj.weight"):
            sd[k], sd[k + "_scale_inv"] = quantize(sd[k] * 40)  # spread values over the e4m3 range
            original[k] = original[k] * 40
    save_file(sd, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    return src, sd, original


def test_fp8_dequantizes_within_quantization_error_and_reexports_the_scales(tmp_path):
    src, fp8, original = fp8_checkpoint(tmp_path)
    ragged = [k for k, v in fp8.items() if v.dtype == FP8 and (v.shape[0] % 128 or v.shape[1] % 128)]
    assert ragged  # edge blocks are exercised
    do_import(src, str(tmp_path / "ck"), fp8="dequant", dtype="float32")
    got = load_dir(str(tmp_path / "ck"))
    for k, v in fp8.items():
        if v.dtype != FP8:
            continue
        w = got[f"model/{k}"]
        assert torch.equal(w, dequantize(v, fp8[k + "_scale_inv"]))  # exact dequantisation
        # and within e4m3's relative step (2^-3) of the weights before quantisation
        err = (w - original[k]).abs()
        assert (err <= original[k].abs() * 0.0625 + fp8[k + "_scale_inv"].max() * 2 ** -9).all(), k
    do_export(str(tmp_path / "ck"), str(tmp_path / "out"), fp8_blocks=True)
    back = load_dir(str(tmp_path / "out"))
    for k, v in fp8.items():
        if k.endswith("_scale_inv"):
            torch.testing.assert_close(back[k], v, rtol=1e-6, atol=0)  # the block scales come back
        elif v.dtype == FP8:
            assert back[k].dtype == FP8
            assert (back[k].float() - v.float()).abs().max() == 0
    assert json.load(open(tmp_path / "out" / "config.json"))["quantization_config"]["fmt"] == "e4m3"


def test_fp8_keep_passes_weights_and_scales_through(tmp_path):
    src, fp8, _ = fp8_checkpoint(tmp_path)
    do_import(src, str(tmp_path / "ck"), fp8="keep")
    do_export(str(tmp_path / "ck"), str(tmp_path / "out"))
    back = load_dir(str(tmp_path / "out"))
    for k, v in fp8.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].view(torch.uint8) if v.dtype == FP8 else back[k],
                                                        v.view(torch.uint8) if v.dtype == FP8 else v), k


def test_checks_before_writing(tmp_path):
    src = str(tmp_path / "hf")
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(src)
    sd = load_file(os.path.join(src, "model.safetensors"))
    sd["model.layers.0.self_attn.kv_b_proj.weight"] = torch.zeros(5, 8)
    del sd["model.norm.weight"]
    sd["model.layers.0.mystery.weight"] = torch.zeros(2)
    save_file(sd, os.path.join(src, "model.safetensors"))
    with pytest.raises(ConvertError) as err:
        do_import(src, str(tmp_path / "ck"))
    msg = str(err.value)
    assert "missing tensor model.norm.weight (expected shape (32,))" in msg
    assert "tensor model.layers.0.self_attn.kv_b_proj.weight: shape (5, 8)" in msg and "(64, 8) from config.json" in msg
    assert "unexpected tensor model.layers.0.mystery.weight" in msg
    assert not os.path.exists(tmp_path / "ck")  # nothing written
    good = str(tmp_path / "good")
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(good)
    os.makedirs(tmp_path / "busy")
    (tmp_path / "busy" / "keep.txt").write_text("precious")
    with pytest.raises(ConvertError, match="exists and is not empty"):
        do_import(good, str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "keep.txt").read_text() == "precious"


def test_module_entry_point(tmp_path):
    src = str(tmp_path / "hf")
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(src)
    res = subprocess.run([sys.executable, "-m", "tools.convert", "import", "--hf-dir", src, "--out",
                          str(tmp_path / "ck")], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0 and "imported" in res.stdout, res.stderr


@pytest.mark.slow
def test_verify_after_import_under_tp2_pp2_ep2(tmp_path):
    src = str(tmp_path / "hf")
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(src)
    add_mtp_layer(src)
    do_import(src, str(tmp_path / "ck"), dtype="float32")
    from spawn_cases import cli_on_ranks  # torchrun's environment on 8 ranks (test_verify_hf.py runs torchrun)

    status, out = cli_on_ranks(8, "verify-hf", "--hf-dir", src, "--ckpt", str(tmp_path / "ck"), "--tp", "2",
                               "--pp", "2", "--ep", "2")
    assert status == 0, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert float(re.fullmatch(r"max_abs_logit_diff=(\S+)", last).group(1)) < 1e-4


def test_checkpoint_meta_without_a_model_is_a_named_error():
    from r1mega.errors import CheckpointError
    from r1mega.models.family import family_from_meta

    with pytest.raises(CheckpointError, match="neither hf_config nor model_config"):
        family_from_meta({"family": "deepseek_v3"})
    with pytest.raises(CheckpointError, match="model_config does not fit deepseek_v3"):
        family_from_meta({"family": "deepseek_v3", "model_config": {"hidden_size": 64, "no_such_key": 1}})


def test_import_writes_a_manifest_that_names_an_edited_file(tmp_path):
    """An imported checkpoint is covered by manifest.json as a training save is: an edited meta.json
    or a part file copied in from another import is refused by name (the parts' CRCs alone do not
    tie meta.json and the listings to the save)."""
    from r1mega.train.checkpoint import CheckpointError, read_meta, verify_manifest

    src = str(tmp_path / "hf")
    tiny_dense("llama", src)
    for name in ("a", "b"):
        assert convert_main(["import", "--hf-dir", src, "--out", str(tmp_path / name), "--dtype", "float32",
                             "--shard-size", "0.00002"]) == 0
    ck = str(tmp_path / "a")
    manifest = json.load(open(os.path.join(ck, "manifest.json")))
    assert {"meta.json", "part00000.safetensors", "part00000.json"} <= set(manifest["files"])
    verify_manifest(ck, read_meta(ck))  # untouched: accepted
    meta = json.load(open(os.path.join(ck, "meta.json")))
    meta["model_config"]["rms_norm_eps"] = 1e-3
    with open(os.path.join(ck, "meta.json"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointError, match="meta.json: differs"):
        verify_manifest(ck, read_meta(ck))
    with pytest.raises(CheckpointError, match="meta.json: differs"):
        do_export(ck, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    # a part copied in from another model's import: refused by the manifest too
    tiny_dense("qwen2", str(tmp_path / "hf2"))
    assert convert_main(["import", "--hf-dir", str(tmp_path / "hf2"), "--out", str(tmp_path / "c"),
                         "--shard-size", "0.00002"]) == 0
    b, c = str(tmp_path / "b"), str(tmp_path / "c")
    os.replace(os.path.join(c, "part00001.safetensors"), os.path.join(b, "part00001.safetensors"))
    with pytest.raises(CheckpointError, match="part00001.safetensors: differs"):
        verify_manifest(b, read_meta(b))
