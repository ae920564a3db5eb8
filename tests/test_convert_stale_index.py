"""A Hugging Face directory with model.safetensors and a model.safetensors.index.json beside it: what
`save_pretrained` leaves when a model saved sharded is saved again unsharded (it removes the old
shards, not the old index). transformers reads model.safetensors; r1mega read the stale index, so
`verify-hf` crashed (FileNotFoundError traceback) and `r1mega-convert import` refused a model
transformers loads, and with the old shards still there both would have read the old weights."""
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from r1mega import verify_hf
from r1mega.models.weights import PieceReader, SafetensorsDir, hf_weight_files
from tools import convert


@pytest.fixture(scope="module")
def resaved(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("resaved")
    cfg = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    d = root / "model"
    model.save_pretrained(d, max_shard_size="20KB")
    shards = sorted(n for n in os.listdir(d) if n.startswith("model-"))
    assert len(shards) > 1
    old = root / "old_shards"
    old.mkdir()
    for n in shards:
        shutil.copy(d / n, old / n)
    with torch.no_grad():  # "fine-tuned", then saved again into the same directory, unsharded
        for p in model.parameters():
            p.add_(0.5)
    model.save_pretrained(d)
    assert {"model.safetensors", "model.safetensors.index.json"} <= set(os.listdir(d))
    return d, old


def test_the_single_file_is_read_as_transformers_reads_it(resaved):
    d, _ = resaved
    assert hf_weight_files(str(d)) == (None, ["model.safetensors"])
    new = load_file(str(d / "model.safetensors"))
    src = SafetensorsDir(str(d))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(src.read(key, tuple(new[key].shape), None, 0, 1), new[key])


def test_import_and_verify_read_the_new_weights(resaved, tmp_path, capsys):
    d, _ = resaved
    out = tmp_path / "ckpt"
    assert convert.main(["import", "--hf-dir", str(d), "--out", str(out), "--dtype", "float32"]) == 0
    new = load_file(str(d / "model.safetensors"))
    got = PieceReader(str(out), "model")
    for key in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"):
        assert torch.equal(got.read(key, tuple(new[key].shape), None, 0, 1), new[key])
    assert verify_hf.main(["--hf-dir", str(d), "--seq-length", "16"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_old_shards_beside_the_single_file_are_not_read(resaved, tmp_path):
    d, old = resaved
    both = tmp_path / "both"
    shutil.copytree(d, both)
    for n in os.listdir(old):
        shutil.copy(old / n, both / n)
    new = load_file(str(d / "model.safetensors"))
    key = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(SafetensorsDir(str(both)).read(key, tuple(new[key].shape), None, 0, 1), new[key])
    files = convert.hf_files(str(both))
    assert list(files) == ["model.safetensors"] and key in files["model.safetensors"]
