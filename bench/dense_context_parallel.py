"""A dense student's training step under context parallelism on CPU: per-rank peak live tensor
bytes and step seconds, one process against cp=2 (gloo ranks), at growing sequence lengths, with
the loss of both (they must agree). Rows are packed documents, so one process and cp=2 run the
same block attention kernel (plain causal rows take SDPA's fused kernel in one process, which a
zigzag chunk cannot: its keys start before its queries).

    python bench/dense_context_parallel.py [--lengths 1024 4096] [--config configs/tiny/distill_student.yaml] \
        [student.hidden_size=512 ...]

Peak live bytes are counted by the recording mode of `models/activation_memory.py` (every tensor
created in the forward+backward, each storage once), so the step times include its overhead.
"""
from __future__ import annotations

import argparse
import time

import torch

from r1mega.config import ParallelConfig, load_config, validate
from r1mega.models.activation_memory import PeakLiveBytes
from r1mega.config import build_config
from r1mega.parallel.layout import build_parallel_state, single_process_state
from r1mega.parallel.spawn import run_ranks
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.setup import build_chunks, init_weights

MiB = 2 ** 20


def step(rank: int, world: int, config: str, overrides: list[str], s: int, cp: int) -> dict:
    torch.set_num_threads(1)
    student = load_config(config, overrides).student
    student.max_position_embeddings = max(s, student.max_position_embeddings)
    cfg = validate(build_config(student, ParallelConfig(cp=cp)), world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=0)
    ids = torch.randint(0, student.vocab_size, (1, s), generator=torch.Generator().manual_seed(0))
    labels = torch.roll(ids, -1, 1)
    docs = (torch.arange(s) * 8 // s)[None]  # 8 packed documents: both layouts take the block kernel
    positions = torch.arange(s)[None] - (docs * s // 8)
    lm_forward_backward(chunks, ps, ids[:, :4 * cp], labels[:, :4 * cp])  # warm-up
    rec = PeakLiveBytes()
    t0 = time.perf_counter()
    with rec:
        res = lm_forward_backward(chunks, ps, ids, labels, attn_mask=docs, position_ids=positions)
    return {"peak": rec.peak, "seconds": time.perf_counter() - t0, "loss": res.loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--config", default="configs/tiny/distill_student.yaml")
    p.add_argument("overrides", nargs="*", help="e.g. student.hidden_size=512 (wider: activations outweigh "
                   "the attention kernel's transient scores, as at real sizes)")
    args = p.parse_args()
    print(f"{'s':>6} {'1 proc MiB':>11} {'cp2 MiB/rank':>13} {'ratio':>6} {'1 proc s':>9} {'cp2 s':>7} {'loss diff':>10}")
    for s in args.lengths:
        one = step(0, 1, args.config, args.overrides, s, 1)
        two = run_ranks(step, 2, args.config, args.overrides, s, 2)
        peak2, secs2 = max(r["peak"] for r in two), max(r["seconds"] for r in two)
        print(f"{s:>6} {one['peak'] / MiB:>11.1f} {peak2 / MiB:>13.1f} {peak2 / one['peak']:>6.2f} "
              f"{one['seconds']:>9.2f} {secs2:>7.2f} {abs(one['loss'] - two[0]['loss']):>10.2e}")


if __name__ == "__main__":
    main()
