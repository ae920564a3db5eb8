"""Hostile probe: a DeepSeek-V3 model with no shared experts (`n_shared_experts: 0`), as transformers
builds and saves it. transformers keeps the shared-expert module with zero-sized weights and writes
them to the checkpoint ([0, hidden] / [hidden, 0]); they hold nothing, so the import must take the
checkpoint and verify-hf must not count their (empty) gradients as missing."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def no_shared_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(
        vocab_size=97, hidden_size=48, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=12, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=1, n_shared_experts=0, max_position_embeddings=64)
    model = transformers.DeepseekV3ForCausalLM(cfg)
    d = tmp_path_factory.mktemp("v3_no_shared") / "hf"
    model.save_pretrained(d)
    return str(d)


def _saved_shared(hf_dir: str) -> list[tuple[str, list[int]]]:
    from safetensors import safe_open

    with safe_open(f"{hf_dir}/model.safetensors", "pt") as f:
        return [(k, f.get_slice(k).get_shape()) for k in f.keys() if "shared_experts" in k]


def test_import_takes_transformers_zero_sized_shared_experts(no_shared_dir, tmp_path):
    from tools.convert import do_import
    from r1mega.models.weights import load_weights
    from r1mega.models.weights import PieceReader

    saved = _saved_shared(no_shared_dir)
    assert saved and all(0 in shape for _, shape in saved)  # the premise: transformers writes empty tensors
    out = tmp_path / "ckpt"
    do_import(no_shared_dir, str(out), dtype="float32")
    # the imported weights give transformers' logits
    from r1mega.config import build_config, validate
    from r1mega.models.family import family_for_hf
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.lm_step import lm_forward_backward

    family, model_cfg = family_for_hf(no_shared_dir)
    cfg = validate(build_config(model_cfg), 1)
    ps = single_process_state()
    ours = family.build_stage(cfg.active_model, ps, cfg.parallel.pp_layers)
    load_weights(ours, PieceReader(str(out), "model"))
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    with torch.no_grad():
        step = lm_forward_backward(ours, ps, ids, labels, forward_only=True)
        ref = transformers.AutoModelForCausalLM.from_pretrained(no_shared_dir, dtype=torch.float32)(ids).logits
    torch.testing.assert_close(step.logits[0].transpose(0, 1), ref, rtol=1e-5, atol=1e-5)


def test_verify_hf_passes_on_zero_sized_shared_experts(no_shared_dir):
    from r1mega import verify_hf

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = verify_hf.main(["--hf-dir", no_shared_dir, "--seq-length", "12", "--batch-size", "2"])
    out = buf.getvalue()
    assert rc == 0, out
    assert "shared_experts" not in out.split("gradients: worst ")[1].split()[0], out
