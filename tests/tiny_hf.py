"""Tiny random Hugging Face DeepSeek checkpoints, built locally (tests, the demo, verify-hf).

Nothing is downloaded: `transformers` builds the model from a config and saves it in the
official checkpoint layout; `add_mtp_layer` appends the MTP module as DeepSeek stores it.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
            num_hidden_layers=3, num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=2,
            first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4,
            qk_nope_head_dim=8, v_head_dim=8, n_shared_experts=1, max_position_embeddings=256)

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


def make_hf_model(kind: str = "DeepseekV3", seed: int = 0, **overrides):
    """A random `transformers` DeepseekV3/DeepseekV2 ForCausalLM with BASE shapes + overrides."""
    import transformers

    cfg_cls = getattr(transformers, f"{kind}Config")
    model_cls = getattr(transformers, f"{kind}ForCausalLM")
    cfg = cfg_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    randomize(model, seed)
    return model


def save_peaked_v32(path: str) -> None:
    """A tiny DeepSeek-V3.2 (16 indexer heads, top-5 keys) saved at `path`, its matrices scaled x4:
    peaked logits, so no near-ties turn a sample between two forwards of different shapes."""
    import transformers

    cfg = transformers.DeepseekV32Config(**BASE, n_group=2, topk_group=1, index_n_heads=16, index_head_dim=16,
                                         index_topk=5)
    torch.manual_seed(0)
    hf = transformers.DeepseekV32ForCausalLM(cfg).float().eval()
    randomize(hf, 0)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.mul_(4)
    hf.save_pretrained(path)


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


def batch(vocab: int, b: int, s: int, seed: int = 0):
    """Random token ids and next-token labels (a few targets ignored, as with prompts)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    labels[0, :3] = -100
    return ids, labels
