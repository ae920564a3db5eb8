"""Decode throughput with and without the MLA latent KV cache, and the rollout/training log-prob gap.

    python bench/decode_throughput.py [--lengths 32 64 128] [--batch 8]

Both decoders run side by side on the same model and prompts in one process: `generate` (latent
cache, absorbed attention) and re-running the whole sequence for every new token. Tokens/s and
their ratio are printed per generated length, then the largest |log p_rollout - log p_train| over
the sampled tokens (the training forward run on exactly the rollout's tokens).
"""
from __future__ import annotations

import argparse
import time

import torch

from r1mega.config import Config, ModelConfig, validate
from r1mega.inference.generate import GenerationConfig, generate, greedy_by_full_forward
from r1mega.parallel.layout import single_process_state
from r1mega.parallel.pipeline import Microbatch
from r1mega.rl.grpo import sequence_logprobs, to_train_batch
from r1mega.train.trainer import build_chunks, init_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    cfg = validate(Config(model=ModelConfig(vocab_size=512, hidden_size=128, num_layers=4, num_heads=8,
                                            kv_lora_rank=32, q_lora_rank=64)), 1)
    ps = single_process_state()
    model = build_chunks(cfg, ps)
    init_weights(model, seed=0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (args.prompt,), generator=g).tolist() for _ in range(args.batch)]
    print(f"model: {cfg.model.num_layers} layers, hidden {cfg.model.hidden_size}, {cfg.model.n_routed_experts} experts;"
          f" batch {args.batch}, prompt {args.prompt} tokens, greedy, {torch.get_num_threads()} threads")
    print(f"{'new tokens':>10} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speed-up':>9} {'cache MiB':>10}")
    for n in args.lengths:
        t0 = time.perf_counter()
        r = generate(model, ps, prompts, GenerationConfig(max_new_tokens=n, temperature=0.0))
        cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = greedy_by_full_forward(model, ps, prompts, n)
        uncached = time.perf_counter() - t0
        assert torch.equal(full, r.tokens), "cache and no-cache decoding disagree"
        tokens = args.batch * n
        print(f"{n:>10} {tokens / cached:>12.1f} {tokens / uncached:>15.1f} {uncached / cached:>8.2f}x"
              f" {r.cache_bytes / 2**20:>10.2f}")
    r = generate(model, ps, prompts, GenerationConfig(max_new_tokens=args.lengths[-1], temperature=1.0, seed=1))
    batch = to_train_batch(r, torch.ones(args.batch, dtype=torch.bool))
    mb = Microbatch(batch.input_ids, None, batch.attn_mask, batch.position_ids, None, {"targets": batch.targets})
    train_logp = sequence_logprobs(model, ps, [mb], temperature=1.0)
    gap = (train_logp - batch.rollout_logp).abs()[batch.mask]
    print(f"rollout vs training log-prob gap over {gap.numel()} sampled tokens: max {gap.max():.3e}, "
          f"mean {gap.mean():.3e} (float32)")


if __name__ == "__main__":
    main()
