"""Sampling one decoding step over a real vocabulary on CPU: r1mega's sampler (counter-based Gumbel
noise, exact top-p support) against transformers' (its temperature and top-p warpers, softmax,
multinomial), side by side on the same logits.

    python bench/sampling_large_vocab.py [--vocab 32000 151936] [--rows 1 16 64] [--repeats 5]

Two kinds of logits: `lm` falls with the log of a token's rank plus noise (a language model's long
tail: a top-p 0.95 set of tens to hundreds of tokens), `gauss` is N(0, 3^2) (a broad set: thousands).
Prints CPU ms per call (best of --repeats, the two interleaved) and transformers / r1mega.
1 thread (a shared CPU).
"""
from __future__ import annotations

import argparse
import time

import torch


def logits(kind: str, rows: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows * 7 + vocab)
    noise = torch.randn(rows, vocab, generator=g)
    if kind == "gauss":
        return noise * 3
    rank = torch.rand(rows, vocab, generator=g).argsort(-1).float()
    return 1.5 * (-1.1 * torch.log1p(rank) + 0.3 * noise)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from r1mega.inference.sampling import row_keys, sample
    from r1mega.parallel.layout import single_process_state

    ps = single_process_state()
    settings = [(1.0, 1.0), (1.0, 0.95), (0.6, 0.95)]
    print("| logits | vocab | rows | temperature | top-p | r1mega ms | transformers ms | transformers / r1mega |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in ("lm", "gauss"):
        for vocab in args.vocab:
            for rows in args.rows:
                x = logits(kind, rows, vocab)
                keys = row_keys(1, 0, torch.arange(rows))
                ids = torch.zeros(rows, 1, dtype=torch.long)
                for temperature, top_p in settings:
                    def ours():
                        return sample(x, ps, temperature, top_p, keys=keys)

                    def theirs():
                        s = TemperatureLogitsWarper(temperature)(ids, x)
                        if top_p < 1:
                            s = TopPLogitsWarper(top_p)(ids, s)
                        return torch.multinomial(torch.softmax(s, -1), 1)

                    best = {"ours": float("inf"), "theirs": float("inf")}
                    for _ in range(args.repeats):
                        for name, f in (("ours", ours), ("theirs", theirs)):
                            t = time.process_time()
                            f()
                            best[name] = min(best[name], time.process_time() - t)
                    print(f"| {kind} | {vocab} | {rows} | {temperature} | {top_p} | {1e3 * best['ours']:.1f} | "
                          f"{1e3 * best['theirs']:.1f} | {best['theirs'] / best['ours']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
