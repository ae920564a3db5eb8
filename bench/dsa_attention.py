"""Attention time per token with DeepSeek Sparse Attention against dense MLA, by context length.

    python bench/dsa_attention.py [--lengths 512 1024 2048 4096 8192] [--topk 512] [--backward]

One attention layer (MLA + lightning indexer, the indexer/MLA cost ratio of the 671B model: ~1/17
per key) on one sequence, run both ways in the same process on the same weights: `dense` is MLA
over every preceding key (as V3, and as V3.2's dense warm-up), `DSA` selects each query's top-k
keys with the indexer (by query blocks) and attends to those only. Past top-k, DSA's attention
(O(s k)) stops growing per token while dense MLA's (O(s^2)) grows linearly; what still grows under
DSA is the indexer's scoring (O(s^2) too, ~17x fewer multiply-adds per key; DeepSeek runs it in
FP8), shown in its own column (timed alone) with the rest ("DSA attention") beside it. Timings on a
shared CPU are noisy; the ratios within one run are what to read. Median of --repeats runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from r1mega.models.deepseek_v32.attention import DSAttention
from r1mega.models.deepseek_v32.config import DSAConfig
from r1mega.models.rope import RotaryEmbedding
from r1mega.parallel.layout import single_process_state


def layer(topk: int) -> tuple[DSAttention, RotaryEmbedding, DSAConfig]:
    # 16 heads x (576-wide latent keys: 128 + 32 rope | 128 values); indexer 4 heads x 64: per key
    # 16 x (160 + 128) = 4.6K MLA multiply-adds vs 256 for the indexer (671B: 139K vs 8.2K)
    cfg = DSAConfig(hidden_size=256, num_heads=16, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=32,
                    qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=0, index_n_heads=4, index_head_dim=64,
                    index_topk=topk, max_position_embeddings=1 << 20)
    torch.manual_seed(0)
    attn = DSAttention(cfg, single_process_state())
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    return attn, RotaryEmbedding(cfg.qk_rope_head_dim, 10000.0, None, 1 << 20, True), cfg


def timed(attn, rope, x, dense: bool, backward: bool, repeats: int) -> float:
    attn.dense = dense
    cos, sin = rope.cos_sin(torch.arange(x.shape[0]))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if backward:
            x.grad = None
            attn(x, rope, cos, sin).sum().backward()
        else:
            with torch.no_grad():
                attn(x, rope, cos, sin)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def indexer_time(attn, rope, x, repeats: int) -> float:
    """Seconds of the indexer alone (queries, keys, blockwise top-k) on the same inputs."""
    cos, sin = rope.cos_sin(torch.arange(x.shape[0]))
    runs = []
    with torch.no_grad():
        q_in, _, _ = attn.project_latents(x, rope, cos, sin)
        for _ in range(repeats):
            t0 = time.perf_counter()
            k = attn.indexer.keys(x, cos, sin)
            q, w = attn.indexer.queries(q_in, x, cos, sin)
            attn.indexer.select(q, w, k, None, None, attn.indexer.topk)
            runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--topk", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backward", action="store_true", help="time forward + backward (training)")
    args = p.parse_args(argv)
    attn, rope, cfg = layer(args.topk)
    print(f"one attention layer, top-k {args.topk}, {'forward+backward' if args.backward else 'forward'}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'tokens':>8} {'dense us/token':>15} {'DSA us/token':>13} {'of which indexer':>17} "
          f"{'DSA attention':>14} {'dense/DSA':>10}")
    for s in args.lengths:
        x = torch.randn(s, 1, cfg.hidden_size, generator=torch.Generator().manual_seed(s),
                        requires_grad=args.backward)
        dense = timed(attn, rope, x, True, args.backward, args.repeats) / s * 1e6
        sparse = timed(attn, rope, x, False, args.backward, args.repeats) / s * 1e6
        index = indexer_time(attn, rope, x.detach(), args.repeats) / s * 1e6 if s > args.topk else 0.0
        print(f"{s:>8} {dense:>15.1f} {sparse:>13.1f} {index:>17.1f} {sparse - index:>14.1f} {dense / sparse:>10.2f}")


if __name__ == "__main__":
    main()
