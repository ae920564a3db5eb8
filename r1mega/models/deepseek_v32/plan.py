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
from dataclasses import fields, replace
from typing import Optional

from r1mega.config import Config, ModelConfig
from r1mega.models.deepseek_v32.params import attention_flops_per_token, count_params, indexer_params
from r1mega.models.stage import stage_layers

GiB = 1024 ** 3


def base_config(m) -> ModelConfig:
    """The DeepSeek-V3 part of a V3.2 config."""
    return ModelConfig(**{f.name: getattr(m, f.name) for f in fields(ModelConfig)})


def dsa_activation_bytes_per_token_layer(m, weight_bytes: int = 2, with_index_loss: bool = True) -> float:
    """What one DSA layer holds for backward per token beyond V3's MLA: top-k indices (int64), and
    under the indexer loss its queries, head weights (float32) and key."""
    held = m.index_topk * 8
    if with_index_loss:
        held += (m.index_n_heads * m.index_head_dim + m.index_head_dim) * weight_bytes + m.index_n_heads * 4
    return held


def make_dsa_plan(cfg: Config, world: int, micro_batch: int, seq: int, global_batch: Optional[int] = None,
                  weight_bytes: int = 2, rollout_batch: int = 0, rollout_len: int = 0):
    from r1mega.plan import make_plan

    m = cfg.model
    plan = make_plan(replace(cfg, model=base_config(m)), world, micro_batch, seq, global_batch, weight_bytes,
                     rollout_batch, rollout_len)
    lay = plan.layout
    pp_layers = cfg.parallel.pp_layers
    layers = len(stage_layers(m.num_layers, lay["pp"], plan.stage, pp_layers))
    layers += m.num_mtp_layers if plan.stage == lay["pp"] - 1 else 0
    idx = indexer_params(m) * layers
    plan.counts = count_params(m)
    plan.memory["weights"] += idx * weight_bytes
    plan.memory["grads"] += idx * weight_bytes
    plan.memory["optimizer"] += 12 * idx / (lay["dp"] * lay["cp"])
    if seq > m.index_topk:
        tokens = micro_batch * seq / lay["cp"]
        in_flight = min(lay["pp"] - plan.stage, max((global_batch or micro_batch * lay["dp"])
                                                     // (micro_batch * lay["dp"]), 1))
        # full recompute keeps each layer's input only: one layer's DSA tensors live at a time
        held = 1 if cfg.train.recompute == "full" else layers * in_flight
        plan.memory["activations"] += tokens * held * dsa_activation_bytes_per_token_layer(m, weight_bytes)
    if plan.kv_cache:
        n = rollout_batch * rollout_len * (m.num_layers / lay["pp"]) * weight_bytes / lay["dp"]
        plan.kv_cache["index_keys"] = n * m.index_head_dim
    return plan


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
