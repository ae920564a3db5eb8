"""Token slots of the GRPO update, padded rows against packed ones, on long-tailed rollouts.

    python bench/grpo_update_padding.py            # R1's shape (synthetic lengths) + a real tiny rollout

1. R1's step shape, lengths only: 512 sequences, 200-token prompts, responses lognormal with median
   2K tokens capped at 8K (as issue 20's estimate). Padded: every row as long as the longest
   sequence; packed: sequences whole into rows of the longest sequence's length (rl.pack_tokens=0)
   by first-fit decreasing (the engine's `first_fit_decreasing`). Attention work is counted as the
   block kernel does it: causal blocks of a row cost ~ S^2 / 2 whatever the documents.
2. A real rollout of the tiny model (16 samples, stop at a token divisible by 9, up to 128 new
   tokens) through the engine's own `update_batches`, with the wall time of the old-log-prob
   forward and of one update's forward+backward (noisy: the CPU is shared).
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from r1mega.rl.train_batch import first_fit_decreasing  # noqa: E402


def r1_shape(seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    n, prompt, cap = 512, 200, 8192
    responses = (torch.randn(n, generator=g) * 0.8 + torch.log(torch.tensor(2048.0))).exp().clamp(1, cap).long()
    lengths = (responses + prompt - 1).tolist()
    S = max(lengths)
    rows = first_fit_decreasing(lengths, S)
    real = sum(lengths)
    padded, packed = n * S, len(rows) * S
    print(f"R1 shape: {n} sequences, real tokens {real:,}; padded slots {padded:,} ({padded / real:.2f}x), "
          f"packed slots {packed:,} in {len(rows)} rows ({packed / real:.2f}x); attention work packed / padded "
          f"{len(rows) / n:.2f}")


def tiny_rollout() -> None:
    from grpo_update_workers import long_tail_rollout, model
    from r1mega.models.family import family_of
    from r1mega.rl.update import global_values, old_and_reference_logprobs, policy_gradients, token_extras
    from r1mega.rl.update import group_advantages, loss_count
    from r1mega.rl.train_batch import update_batches

    torch.set_num_threads(1)
    cfg, chunks, ps = model({}, 1, seed=5)
    r = long_tail_rollout(chunks, ps, 128)
    keep = torch.ones(r.tokens.shape[0], dtype=torch.bool)
    adv = group_advantages(torch.arange(r.tokens.shape[0], dtype=torch.float64) % 3, 2)
    cfg.rl.group_size, cfg.rl.minibatches, cfg.data.micro_batch_size = 2, 1, 4
    lengths = r.completion_mask.sum(1)
    print(f"tiny rollout: {len(lengths)} samples, response lengths {sorted(lengths.tolist())}")
    times = {}
    for packed in (False, True):
        cfg.rl.packed_update = packed
        (b,), (m,) = update_batches(cfg, ps, r, keep)
        t0 = time.perf_counter()
        old, _ = old_and_reference_logprobs(cfg, ps, chunks, None, b, None, m, 128)
        t1 = time.perf_counter()
        count = max(global_values({"n": loss_count(cfg.rl, b, 128)}, ps, torch.device("cpu"))["n"], 1.0)
        policy_gradients(cfg, ps, chunks, b, token_extras(b, adv, old, None), count, m, family_of(chunks[0]).training)
        t2 = time.perf_counter()
        for p in chunks.parameters():
            p.grad = None
        name = "packed" if packed else "padded"
        times[name] = (t1 - t0, t2 - t1)
        real = int((b.seq >= 0).sum())
        print(f"  {name}: rows {tuple(b.input_ids.shape)}, slots {b.slots}, real {real} "
              f"({b.slots / real:.2f}x); old log-probs {t1 - t0:.3f} s, update fwd+bwd {t2 - t1:.3f} s")
    print(f"  packed / padded time: old log-probs {times['packed'][0] / times['padded'][0]:.2f}, "
          f"update {times['packed'][1] / times['padded'][1]:.2f}")


if __name__ == "__main__":
    r1_shape()
    tiny_rollout()
