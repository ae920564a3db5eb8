"""Qwen3-MoE (family qwen3_moe) on one process equals transformers' Qwen3MoeForCausalLM: logits,
loss and every gradient (aux loss off), with mlp_only_layers and decoder_sparse_step, renormalised
and raw top-k weights, tied and untied embeddings; the config round-trips through config.json and
the parameter counts are transformers'."""
import os

import pytest
import torch
import torch.nn.functional as F

from qwen3_moe_hf import VARIANTS, make_qwen3_moe, per_expert_grads
from r1mega.models.family import family_for_hf
from student_workers import evaluate
from tiny_hf import batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_moe")
    return {kind: (str(root / kind), make_qwen3_moe(kind, str(root / kind))) for kind in VARIANTS}


def test_config_reads_layers_and_routing(models):
    family, cfg = family_for_hf(models["only0_norm_untied"][0])
    assert family.name == "qwen3_moe" and cfg.num_experts == 8 and cfg.norm_topk_prob and cfg.head_size == 16
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    _, cfg = family_for_hf(models["step2_raw_tied"][0])
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert cfg.tie_word_embeddings and cfg.attention_bias and not cfg.norm_topk_prob
    assert type(cfg).from_hf(cfg.to_hf()) == cfg


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_matches_transformers(kind, models):
    path, hf = models[kind]
    ids, labels = batch(96, 4, 12, seed=3)
    ours = evaluate(path, {}, 1, ids, labels)
    ref_logits = hf(ids).logits
    ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    hf.zero_grad()
    ref_loss.backward()
    torch.testing.assert_close(ours["logits"], ref_logits.detach(), atol=1e-4, rtol=0)
    assert abs(ours["loss"] - ref_loss.item()) < 1e-5
    ref_grads = per_expert_grads(hf)
    assert set(ours["grads"]) == set(ref_grads)
    assert any(".mlp.experts.7.up_proj." in n for n in ref_grads) and any(".mlp.gate.weight" in n for n in ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(ours["grads"][name], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_parameter_count_is_transformers(kind, models):
    path, hf = models[kind]
    family, cfg = family_for_hf(path)
    counts = family.count_params(cfg)
    assert counts["total"] == sum(p.numel() for p in hf.parameters())
    experts = sum(p.numel() for n, p in hf.named_parameters() if ".mlp.experts." in n)
    moe = cfg.moe_layers()
    assert counts["active"] == counts["total"] - experts + experts * cfg.num_experts_per_tok // (cfg.num_experts)
    assert moe == (3 if kind == "only0_norm_untied" else 2)


@pytest.mark.parametrize("name", ["qwen3_30b_a3b", "qwen3_235b_a22b"])
def test_published_shapes_count_as_transformers(name):
    """configs/model/qwen3_*.yaml: our count = transformers' (meta device) for the same config, and the
    published totals (30.5B / 3.3B active, 235B / 22B active)."""
    import transformers

    from r1mega.config import load_config, validate

    model = validate(load_config(os.path.join(ROOT, "configs", "model", f"{name}.yaml")), 1).model
    with torch.device("meta"):
        hf = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**model.to_hf()))
    from r1mega.models.family import family_of_config

    counts = family_of_config(model).count_params(model)
    assert counts["total"] == sum(p.numel() for p in hf.parameters())
    total, active = {"qwen3_30b_a3b": (30.5e9, 3.3e9), "qwen3_235b_a22b": (235e9, 22e9)}[name]
    assert abs(counts["total"] / total - 1) < 0.01 and abs(counts["active"] / active - 1) < 0.05
