"""Greedy decode throughput, r1mega vs transformers, on the same DeepSeek-V3-shaped weights.

    python bench/decode_throughput.py [--experts 8 64 256] [--dtypes fp32 bf16] [--batch 8 --prompt 32 --new 64]
    python bench/decode_throughput.py --self-check [--lengths 32 64 128]

Side by side (default): transformers' `generate` (its KV cache, experts through grouped_mm) and
r1mega's `generate` (MLA latent cache, absorbed attention) produce --new tokens greedily for the
same --batch random prompts on the same weights, alternating, best of --repeats. Printed:
generated tokens/s of each, their ratio, and how many sequences came out identical (fp32
should give all of them; bf16 may drift after a near tie).

--self-check: r1mega's cached decode against re-running the whole sequence per token (tokens must
be equal), cache size, and the rollout/training log-prob gap of sampled tokens.
"""
from __future__ import annotations

import argparse
import time

import torch

from proxy import DTYPES, add_shape_args, build_pair, describe, setup, sync
from r1mega.inference.generate import GenerationConfig, generate, greedy_by_full_forward
from r1mega.parallel.layout import single_process_state


def hf_generate(model, prompts: torch.Tensor, new: int) -> torch.Tensor:
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, prompts.shape[1]:]


def ours_generate(model, ps, prompts: torch.Tensor, new: int) -> torch.Tensor:
    r = generate(model, ps, prompts.tolist(), GenerationConfig(max_new_tokens=new, temperature=0.0))
    return r.tokens[:, prompts.shape[1]:]


def side_by_side(args) -> None:
    device = setup(args)
    ps = single_process_state()
    print(f"{describe(args)}; greedy, {args.batch} prompts x {args.prompt} tokens + {args.new} new, {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'experts':>7} {'dtype':>5} {'transformers tok/s':>19} {'r1mega tok/s':>13} {'ratio':>6} {'same':>6}")
    for experts in args.experts:
        for name in args.dtypes:
            hf, ours = build_pair(args, experts, DTYPES[name], device)
            hf.generation_config.eos_token_id = None
            g = torch.Generator().manual_seed(1)
            prompts = torch.randint(0, args.vocab, (args.batch, args.prompt), generator=g).to(device)
            t_hf = t_ours = float("inf")
            for _ in range(args.repeats + 1):  # the first round warms up and is not timed
                sync(device)
                t0 = time.perf_counter()
                ref = hf_generate(hf, prompts, args.new)
                sync(device)
                t1 = time.perf_counter()
                got = ours_generate(ours, ps, prompts, args.new)
                sync(device)
                t2 = time.perf_counter()
                if _ > 0:
                    t_hf, t_ours = min(t_hf, t1 - t0), min(t_ours, t2 - t1)
            same = int((ref.cpu() == got.cpu()).all(dim=1).sum())
            tokens = args.batch * args.new
            print(f"{experts:>7} {name:>5} {tokens / t_hf:>19.1f} {tokens / t_ours:>13.1f} {t_hf / t_ours:>5.2f}x "
                  f"{same:>3}/{args.batch}", flush=True)
            del hf, ours


def self_check(args) -> None:
    from r1mega.parallel.pipeline import Microbatch
    from r1mega.rl.policy_scores import sequence_logprobs
    from r1mega.rl.train_batch import to_train_batch

    device = setup(args)
    ps = single_process_state()
    _, model = build_pair(args, args.experts[0], torch.float32, device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, args.vocab, (args.prompt,), generator=g).tolist() for _ in range(args.batch)]
    print(f"{describe(args)}, {args.experts[0]} experts; batch {args.batch}, prompt {args.prompt} tokens, greedy")
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
    train_logp = sequence_logprobs(torch.nn.ModuleList([model]), ps, [mb], temperature=1.0)
    gap = (train_logp - batch.rollout_logp).abs()[batch.mask]
    print(f"rollout vs training log-prob gap over {gap.numel()} sampled tokens: max {gap.max():.3e}, "
          f"mean {gap.mean():.3e} (float32)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64, help="generated tokens per prompt")
    p.add_argument("--self-check", action="store_true", help="cached vs re-forward decode and the log-prob gap")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128], help="--self-check lengths")
    args = p.parse_args()
    self_check(args) if args.self_check else side_by_side(args)


if __name__ == "__main__":
    main()
