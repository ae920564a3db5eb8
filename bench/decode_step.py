"""The rollout engine's decoding step on the tiny model: CPU ms per step at 1 and 64 live rows, and
(--ops) the top-level torch ops a 1-row step runs, counted per module.

    python bench/decode_step.py [--rows 1 64] [--prompt-len 16] [--steps 100] [--repeats 3] [--ops]
                                [--family moe|dense]

A step here is `ContinuousBatcher.decode()`: block bookkeeping, the view, the forward, sampling
(T=1, top-p 0.95) and the stop checks, as in a rollout. Best of --repeats runs of --steps steps;
1 thread. The tail of a long-tailed rollout is few rows decoding alone, so the 1-row step is what
the time per token at a large --max-new-tokens pays. --prompt-len: each row's cached tokens at the
start (a long tail's rows have hundreds).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout_throughput import tiny_model  # noqa: E402

from r1mega.inference.continuous import ContinuousBatcher  # noqa: E402
from r1mega.inference.generate import GenerationConfig  # noqa: E402
from r1mega.parallel.layout import sequence_parallel_off  # noqa: E402


def dense_model():
    """A small dense (Qwen2-shaped) student in the tiny model's size class, random weights."""
    from r1mega.config import Config, ParallelConfig, validate
    from r1mega.models.dense.config import DenseConfig
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.setup import build_chunks, init_weights

    model = DenseConfig(arch="qwen2", vocab_size=384, hidden_size=64, intermediate_size=128, num_layers=4,
                        num_heads=4, num_kv_heads=2, max_position_embeddings=8192)
    cfg = validate(Config(model=model, parallel=ParallelConfig()), 1)
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=3)
    return chunks.eval(), ps, 384


def engine(chunks, ps, vocab: int, rows: int, steps: int, compiled: bool = False, prompt_len: int = 16):
    """An engine with `rows` live rows (prompts of `prompt_len` tokens, first tokens drawn), ready to decode."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (prompt_len,), generator=g).tolist() for _ in range(rows)]
    gen = GenerationConfig(max_new_tokens=10 * steps, temperature=1.0, top_p=0.95, seed=1,
                           stop=lambda ids: False, compile_decode=compiled)
    e = ContinuousBatcher(chunks[0], ps, prompts, list(range(rows)), gen)
    new = e.admit()
    e.prefill(list({id(r.group): r.group for r in new}.values()))
    e.start(new)
    return e


class OpCounter(TorchDispatchMode):
    """Counts aten ops by the innermost module running (forward hooks keep a module stack)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.stack = ["engine"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.stack[-1], str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(chunks, ps, vocab) -> None:
    model = chunks[0]
    counter = OpCounter()
    hooks = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        hooks.append(m.register_forward_pre_hook(lambda m_, a, k=kind: counter.stack.append(k) or None))
        hooks.append(m.register_forward_hook(lambda m_, a, o: counter.stack.pop() and None))
    with sequence_parallel_off(ps), torch.inference_mode():
        e = engine(chunks, ps, vocab, 1, 4)
        e.decode()
        with counter:
            e.decode()
    for h in hooks:
        h.remove()
    per_module = collections.Counter()
    for (mod, _), n in counter.counts.items():
        per_module[mod] += n
    print(f"aten ops in a 1-row decoding step: {sum(per_module.values())}")
    for mod, n in per_module.most_common():
        top = sorted(((op, c) for (m, op), c in counter.counts.items() if m == mod), key=lambda x: -x[1])[:8]
        print(f"  {mod:>24}: {n:>4}   " + ", ".join(f"{op} {c}" for op, c in top))


def step_ms(chunks, ps, vocab, rows: int, steps: int, repeats: int, compiled: bool = False,
            prompt_len: int = 16) -> tuple[float, float]:
    best_cpu = best_wall = float("inf")
    with sequence_parallel_off(ps), torch.inference_mode():
        for _ in range(repeats):
            e = engine(chunks, ps, vocab, rows, steps, compiled, prompt_len)
            e.decode()  # warm (and, compiled, the first call compiles)
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                e.decode()
            best_cpu = min(best_cpu, time.process_time() - c0)
            best_wall = min(best_wall, time.perf_counter() - w0)
    return 1e3 * best_cpu / steps, 1e3 * best_wall / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ops", action="store_true")
    p.add_argument("--family", default="moe", choices=["moe", "dense"])
    p.add_argument("--compile", action="store_true",
                   help="also time the compiled step (GenerationConfig.compile_decode; rows up to "
                        "compiled_decode.COMPILED_MAX_ROWS), eager and compiled interleaved; prints compile time")
    args = p.parse_args()
    torch.set_num_threads(1)
    chunks, ps, vocab = tiny_model() if args.family == "moe" else dense_model()
    if args.ops:
        count_ops(chunks, ps, vocab)
    for rows in args.rows:
        for compiled in ([False, True] if args.compile else [False]):
            if compiled:
                w0 = time.perf_counter()
                step_ms(chunks, ps, vocab, rows, 2, 1, True)  # compiles (or finds its graph cached)
                print(f"  first compiled steps at {rows} rows: {time.perf_counter() - w0:.1f} s (compiling included)")
            cpu, wall = step_ms(chunks, ps, vocab, rows, args.steps, args.repeats, compiled, args.prompt_len)
            kind = "compiled" if compiled else "eager"
            print(f"{args.family} decoding step, {rows} live rows of {args.prompt_len}+ tokens, {kind}: "
                  f"{cpu:.3f} ms CPU, {wall:.3f} ms wall",
                  flush=True)


if __name__ == "__main__":
    main()
