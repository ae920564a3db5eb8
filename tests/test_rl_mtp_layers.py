"""Hostile probe: DeepSeek-V3 checkpoints declaring two MTP modules (`num_nextn_predict_layers: 2`,
HF layers n and n+1). transformers saves none of them (the import must initialise both, as it does
one), and a checkpoint holding both in the official layout (each with its copies of the embedding
and the head) must import with its MTP weights, not be refused for the second layer's tensors."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

LAYERS, MTP = 2, 2


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=LAYERS,
        num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=1, num_nextn_predict_layers=MTP, max_position_embeddings=64)
    d = tmp_path_factory.mktemp("mtp2") / "hf"
    transformers.DeepseekV3ForCausalLM(cfg).save_pretrained(d)
    assert json.loads((d / "config.json").read_text())["num_nextn_predict_layers"] == MTP
    return d


def _tensor(ckpt: str, key: str, shape) -> torch.Tensor:
    from r1mega.models.weights import PieceReader

    return PieceReader(ckpt, "model").read(key, tuple(shape), None, 0, 1)


def test_transformers_checkpoint_without_mtp_layers_imports(hf_dir, tmp_path):
    from tools.convert import do_import

    do_import(str(hf_dir), str(tmp_path / "ckpt"), dtype="float32")


def test_official_layout_with_two_mtp_layers_imports_them(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from tools.convert import do_import, expected_tensors

    config = json.loads((hf_dir / "config.json").read_text())
    state = load_file(str(hf_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    for key, shape in expected_tensors(config).items():
        if key not in state:  # the MTP layers' own tensors
            assert key.startswith(tuple(f"model.layers.{LAYERS + i}." for i in range(MTP))), key
            state[key] = torch.randn(shape, generator=g)
    for i in range(MTP):  # the official layout keeps the embedding and head with every MTP layer
        state[f"model.layers.{LAYERS + i}.embed_tokens.weight"] = state["model.embed_tokens.weight"].clone()
        state[f"model.layers.{LAYERS + i}.shared_head.head.weight"] = state["lm_head.weight"].clone()
    official = tmp_path / "official"
    official.mkdir()
    (official / "config.json").write_text(json.dumps(config))
    save_file(state, str(official / "model.safetensors"))
    do_import(str(official), str(tmp_path / "ckpt"), dtype="float32")
    last_mtp = f"model.layers.{LAYERS + MTP - 1}.eh_proj.weight"
    ours = _tensor(str(tmp_path / "ckpt"), last_mtp, state[last_mtp].shape)
    torch.testing.assert_close(ours, state[last_mtp], rtol=0, atol=0)
