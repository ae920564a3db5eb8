"""Tiny model variants for the parity tests, each differing in a feature the parity must cover."""
import torch

from tiny_hf import make_hf_model

# name -> (HF class name, config overrides)
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


def make_variant(name: str, seed: int = 0):
    kind, overrides = VARIANTS[name]
    return make_hf_model(kind, seed, **overrides)


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


