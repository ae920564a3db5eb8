"""Tiny random transformers Qwen3-MoE checkpoints for the qwen3_moe family's tests (built locally,
nothing downloaded), and how HF's fused expert gradients name r1mega's per-expert tensors."""
from __future__ import annotations

import torch

from tiny_hf import randomize

SHAPES = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
              num_experts_per_tok=2, max_position_embeddings=256)
VARIANTS = {
    # layer 0 dense by mlp_only_layers, 1-3 sparse; renormalised top-k; untied; head_dim 16 != 32 / 4
    "only0_norm_untied": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              mlp_only_layers=[0], decoder_sparse_step=1, norm_topk_prob=True,
                              tie_word_embeddings=False),
    # sparse every second layer (1, 3); raw top-k probabilities; tied; 3 KV heads (replicated at TP2),
    # attention biases, YaRN
    "step2_raw_tied": dict(num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                           decoder_sparse_step=2, norm_topk_prob=False, attention_bias=True,
                           tie_word_embeddings=True,
                           rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                            "original_max_position_embeddings": 8}),
}


def make_qwen3_moe(kind: str, path: str = None, seed: int = 0, **overrides):
    """A random transformers Qwen3MoeForCausalLM (float32, eval), saved at `path` when given."""
    import transformers

    cfg = transformers.Qwen3MoeConfig(**{**SHAPES, **VARIANTS[kind], **overrides})
    torch.manual_seed(seed)
    model = transformers.Qwen3MoeForCausalLM(cfg).float().eval()
    randomize(model, seed)
    if path is not None:
        model.save_pretrained(path)
    return model


def per_expert_grads(hf) -> dict[str, torch.Tensor]:
    """transformers' gradients under checkpoint names: its fused gate_up_proj [E, 2I, D] and
    down_proj [E, D, I] split into each expert's gate_proj / up_proj / down_proj (the saved names)."""
    out = {}
    for name, p in hf.named_parameters():
        g = p.grad
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix, inner = name[:-len("gate_up_proj")], g.shape[1] // 2
            for e in range(g.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"], out[f"{prefix}{e}.up_proj.weight"] = g[e, :inner], g[e, inner:]
        elif name.endswith("mlp.experts.down_proj"):
            for e in range(g.shape[0]):
                out[f"{name[:-len('down_proj')]}{e}.down_proj.weight"] = g[e]
        else:
            out[name] = g
    return out
