"""Tiny random Hugging Face DeepSeek models for tests (built here, nothing downloaded)."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
            num_hidden_layers=3, num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=2,
            first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4,
            qk_nope_head_dim=8, v_head_dim=8, n_shared_experts=1, max_position_embeddings=256)

# name -> (HF class name, config overrides). Each differs in a feature the parity must cover.
VARIANTS = {
    "v3_grouped": ("DeepseekV3", dict(n_group=2, topk_group=1, routed_scaling_factor=2.5)),
    "v3_no_qlora_yarn": ("DeepseekV3", dict(
        q_lora_rank=None, n_group=4, topk_group=2, first_k_dense_replace=2, num_hidden_layers=4,
        rope_scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})),
    "v3_halfsplit_rope_bias": ("DeepseekV3", dict(rope_interleave=False, attention_bias=True,
                                                  n_group=1, topk_group=1, first_k_dense_replace=0)),
    "v2_softmax_greedy": ("DeepseekV2", dict(
        q_lora_rank=None, topk_method="greedy", n_shared_experts=2,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})),
    "v2_group_limited": ("DeepseekV2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                            routed_scaling_factor=16.0)),
}


@torch.no_grad()
def randomize(model, seed: int = 0) -> None:
    """Non-trivial weights everywhere (norms away from 1, a selection bias) so every path counts."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name
                    else 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
        if "e_score_correction_bias" in name:
            b.copy_(0.05 * torch.randn(b.shape, generator=g))


def make_hf_model(variant: str, seed: int = 0):
    import transformers

    kind, overrides = VARIANTS[variant]
    cfg_cls = getattr(transformers, f"{kind}Config")
    model_cls = getattr(transformers, f"{kind}ForCausalLM")
    cfg = cfg_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    randomize(model, seed)
    return model


def add_mtp_layer(hf_dir: str, seed: int = 1) -> None:
    """Append an MTP module the way the official DeepSeek-V3 checkpoint stores it: layer
    `num_hidden_layers` = a MoE decoder block + enorm, hnorm, eh_proj, shared_head, embed_tokens."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    n, D = cfg["num_hidden_layers"], cfg["hidden_size"]
    path = os.path.join(hf_dir, "model.safetensors")
    sd = load_file(path)
    g = torch.Generator().manual_seed(seed)
    src = f"model.layers.{n - 1}."
    new = {}
    for k, v in sd.items():
        if k.startswith(src):
            noise = 0.1 * torch.randn(v.shape, generator=g)
            new[f"model.layers.{n}." + k[len(src):]] = (1 + noise if "norm" in k else noise).to(v.dtype)
    new[f"model.layers.{n}.enorm.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    new[f"model.layers.{n}.hnorm.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    new[f"model.layers.{n}.eh_proj.weight"] = 0.1 * torch.randn(D, 2 * D, generator=g)
    new[f"model.layers.{n}.shared_head.norm.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    new[f"model.layers.{n}.shared_head.head.weight"] = sd["lm_head.weight"].clone()
    new[f"model.layers.{n}.embed_tokens.weight"] = sd["model.embed_tokens.weight"].clone()
    sd.update(new)
    save_file(sd, path, metadata={"format": "pt"})
    cfg["num_nextn_predict_layers"] = 1
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def hf_grads(model) -> dict[str, torch.Tensor]:
    """HF gradients under checkpoint names (fused expert tensors split per expert)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            gate, up = p.grad.chunk(2, dim=1)
            for e in range(p.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = gate[e]
                out[f"{base}{e}.up_proj.weight"] = up[e]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(p.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = p.grad[e]
        else:
            out[name] = p.grad
    return out


def batch(vocab: int, b: int, s: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    labels[0, :3] = -100  # some ignored targets, as with prompts
    return ids, labels
