"""A tied model whose checkpoint stores the head (`lm_head.weight`) but not the embedding: transformers
loads it, filling the tied embedding from the head; r1mega refused it ("tensor
'model.embed_tokens.weight' is missing") in verify-hf, generate and r1mega-convert import. The embedding
now reads the stored head."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from r1mega import verify_hf
from r1mega.models.weights import PieceReader
from tools import convert


@pytest.fixture(scope="module")
def head_only(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("head_only")
    cfg = AutoConfig.for_model("qwen3", vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                               max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(d)
    sd = load_file(str(d / "model.safetensors"))
    assert "lm_head.weight" not in sd
    sd["lm_head.weight"] = sd.pop("model.embed_tokens.weight")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert torch.equal(loaded.model.embed_tokens.weight, sd["lm_head.weight"])  # as transformers reads it
    return d, sd["lm_head.weight"]


def test_verify_hf_reads_the_head_as_the_embedding(head_only, capsys):
    d, _ = head_only
    assert verify_hf.main(["--hf-dir", str(d), "--seq-length", "16"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_import_stores_the_embedding(head_only, tmp_path, capsys):
    d, head = head_only
    out = tmp_path / "ckpt"
    assert convert.main(["import", "--hf-dir", str(d), "--out", str(out), "--dtype", "float32"]) == 0
    got = PieceReader(str(out), "model").read("model.embed_tokens.weight", tuple(head.shape), None, 0, 1)
    assert torch.equal(got, head)
    assert verify_hf.main(["--hf-dir", str(d), "--ckpt", str(out), "--seq-length", "16"]) == 0
    assert "PASS" in capsys.readouterr().out
