"""Planning DeepSeek-V3.2: DeepSeek-V3's plan (weights, optimizer, activations, communication by
layout) plus the indexer, and what DSA changes against dense MLA at long context.

    python -m r1mega.models.deepseek_v32.plan configs/model/hf/deepseek_v32_671b.json [--seq 32768 131072]

Per layer the indexer adds its weights (replicated over TP: every rank selects for all heads),
its key to the rollout cache, and for training: the selected indices [s, k] (int64, kept for the
gather's backward), the indexer's queries [s, heads, d] and weights (kept for its loss's
recomputed blocks). Sparse attention's gathered latents [block, k, r + rope] are a transient of one
query block (recomputed in backward), so they do not grow with the sequence.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Optional

from r1mega.models.deepseek_v3 import plan as v3
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v32.params import attention_flops_per_token, count_params, indexer_params
from r1mega.models.stage import most_stage_layers

GiB = 1024 ** 3


def base_config(m) -> ModelConfig:
    """The DeepSeek-V3 part of a V3.2 config."""
    return ModelConfig(**{f.name: getattr(m, f.name) for f in fields(ModelConfig) if f.name != "family"})


def dsa_activation_bytes_per_token_layer(m, weight_bytes: int = 2, with_index_loss: bool = True) -> float:
    """What one DSA layer holds for backward per token beyond V3's MLA: top-k indices (int64), and
    under the indexer loss its queries, head weights (float32) and key."""
    held = m.index_topk * 8
    if with_index_loss:
        held += (m.index_n_heads * m.index_head_dim + m.index_head_dim) * weight_bytes + m.index_n_heads * 4
    return held


# The family's share of `r1mega plan` (r1mega/plan.py): V3's for the V3 part, plus the indexer.

def stage_params(m, p, stage: int) -> tuple[float, float]:
    """V3's (dense, expert) params of a GPU of `stage`, plus the indexer of each of its layers and MTP
    modules (replicated over TP)."""
    dense, expert = v3.stage_params(base_config(m), p, stage)
    layers, mtp = v3.stage_layer_kinds(m, p, stage)
    return dense + indexer_params(m) * (len(layers) + mtp), expert


def activation_bytes(m, p, stage: int, mb: int, seq: int, act_bytes: int, recompute: str,
                     recompute_modules: Optional[list[str]]) -> float:
    """V3's activations of one microbatch, plus the DSA tensors each layer keeps past top-k tokens
    (none under full recompute: recompute_transient_bytes)."""
    out = v3.activation_bytes(base_config(m), p, stage, mb, seq, act_bytes, recompute, recompute_modules)
    if seq > m.index_topk and recompute != "full":
        layers, mtp = v3.stage_layer_kinds(m, p, stage)
        out += mb * seq / p.cp * (len(layers) + mtp) * dsa_activation_bytes_per_token_layer(m, act_bytes)
    return out


def recompute_transient_bytes(m, p, stage: int, mb: int, seq: int, act_bytes: int, recompute: str,
                              recompute_modules: Optional[list[str]]) -> float:
    """V3's, plus the DSA tensors of the layer being recomputed."""
    out = v3.recompute_transient_bytes(base_config(m), p, stage, mb, seq, act_bytes, recompute, recompute_modules)
    if out and seq > m.index_topk:
        out += mb * seq / p.cp * dsa_activation_bytes_per_token_layer(m, act_bytes)
    return out


def family_comm(m, p, stage: int, tokens: float, micro_per_rank: int, weight_bytes: int) -> dict:
    return v3.family_comm(base_config(m), p, stage, tokens, micro_per_rank, weight_bytes)


def kv_cache_bytes(m, p, tokens: float, weight_bytes: int) -> dict[str, float]:
    """V3's latent cache plus the indexer's key per token and layer."""
    out = v3.kv_cache_bytes(base_config(m), p, tokens, weight_bytes)
    out["index_keys"] = tokens * most_stage_layers(m.num_layers, p.pp, p.pp_layers) * weight_bytes * m.index_head_dim
    return out


def long_context_table(m, lengths=(32768, 131072), weight_bytes: int = 2) -> list[dict]:
    """Per length: attention (+ indexer) training FLOPs per token, dense MLA and DSA; the model's
    total training FLOPs per token both ways; KV-cache bytes per token; extra activations per token."""
    rows = []
    dense_total = lambda s: 6.0 * count_params(m)["active"] + attention_flops_per_token(m, s, sparse=False)  # noqa
    sparse_total = lambda s: 6.0 * count_params(m)["active"] + attention_flops_per_token(m, s, sparse=True)  # noqa
    for s in lengths:
        rows.append({
            "seq": s,
            "attn_tflop_per_token_dense": attention_flops_per_token(m, s, sparse=False) / 1e12,
            "attn_tflop_per_token_dsa": attention_flops_per_token(m, s, sparse=True) / 1e12,
            "total_tflop_per_token_dense": dense_total(s) / 1e12,
            "total_tflop_per_token_dsa": sparse_total(s) / 1e12,
            "kv_bytes_per_token_dense": m.num_layers * (m.kv_lora_rank + m.qk_rope_head_dim) * weight_bytes,
            "kv_bytes_per_token_dsa": m.num_layers * (m.kv_lora_rank + m.qk_rope_head_dim + m.index_head_dim)
            * weight_bytes,
            "dsa_activation_bytes_per_token": m.num_layers * dsa_activation_bytes_per_token_layer(m, weight_bytes),
        })
    return rows


def main(argv=None) -> int:
    from r1mega.models.deepseek_v32.config import DSAConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_config")
    p.add_argument("--seq", type=int, nargs="+", default=[32768, 131072])
    args = p.parse_args(argv)
    m = DSAConfig.from_hf(args.hf_config)
    c = count_params(m)
    print(f"parameters {c['total']:,} (indexer {c['indexer']:,}), activated {c['active']:,}, MTP {c['mtp']:,}")
    print(f"{'tokens':>7} {'attn TF/tok dense':>18} {'DSA':>7} {'total TF/tok dense':>19} {'DSA':>7} "
          f"{'KV KiB/tok dense':>17} {'DSA':>6} {'DSA extra act MiB/tok':>22}")
    for r in long_context_table(m, args.seq):
        print(f"{r['seq']:>7} {r['attn_tflop_per_token_dense']:>18.3f} {r['attn_tflop_per_token_dsa']:>7.3f} "
              f"{r['total_tflop_per_token_dense']:>19.3f} {r['total_tflop_per_token_dsa']:>7.3f} "
              f"{r['kv_bytes_per_token_dense'] / 1024:>17.1f} {r['kv_bytes_per_token_dsa'] / 1024:>6.1f} "
              f"{r['dsa_activation_bytes_per_token'] / 2 ** 20:>22.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
