"""Training throughput, r1mega vs transformers, on the same DeepSeek-V3-shaped weights.

    python bench/train_throughput.py [--experts 8 64 256] [--dtypes fp32 bf16] [--batch 4 --seq 256]

Both engines run one forward + backward of the same token batch per timed step (gradients zeroed
in between, no optimizer), in one process, alternating, so machine load hits both alike. Printed:
tokens/s of each and r1mega/transformers (best of --repeats). Other shapes: --topk, --layers,
--dense-layers, --shared, --hidden, --moe-ffn. On a GPU it also prints r1mega's MFU (bf16 peak).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from proxy import DTYPES, add_shape_args, build_pair, describe, setup, sync
from r1mega.models.deepseek_v3.params import flops_per_token
from r1mega.parallel.layout import single_process_state
from r1mega.train.lm_step import lm_forward_backward

H100_BF16_DENSE_TFLOPS = 989.0


def hf_step(model, ids, labels):
    logits = model(ids).logits
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    loss.backward()
    return float(loss.detach())


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    args = p.parse_args()
    device = setup(args)
    ps = single_process_state()
    print(f"{describe(args)}; batch {args.batch} x {args.seq}, forward + backward, {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'experts':>7} {'dtype':>5} {'transformers tok/s':>19} {'r1mega tok/s':>13} {'ratio':>6}"
          + (f" {'r1mega MFU':>10}" if device.type == "cuda" else ""))
    tokens = args.batch * args.seq
    for experts in args.experts:
        for name in args.dtypes:
            hf, ours = build_pair(args, experts, DTYPES[name], device)
            hf.train(), ours.train()
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
            labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)

            def run_hf(hf=hf):
                hf.zero_grad(set_to_none=True)
                return hf_step(hf, ids, labels)

            def run_ours(ours=ours):
                ours.zero_grad(set_to_none=True)
                return lm_forward_backward(ours, ps, ids, labels).loss

            # warm-up; same weights, same batch: the losses must agree before speed means anything
            loss_hf, loss_ours = run_hf(), run_ours()
            tol = 1e-3 if name == "fp32" else 5e-2
            if abs(loss_hf - loss_ours) > tol * max(1.0, abs(loss_hf)):
                raise SystemExit(f"losses disagree: transformers {loss_hf:.5f}, r1mega {loss_ours:.5f}")
            t_hf = t_ours = float("inf")
            for _ in range(args.repeats):  # alternate so load changes hit both engines
                t_hf = min(t_hf, timed(run_hf, device))
                t_ours = min(t_ours, timed(run_ours, device))
            line = (f"{experts:>7} {name:>5} {tokens / t_hf:>19.1f} {tokens / t_ours:>13.1f} "
                    f"{t_hf / t_ours:>5.2f}x")
            if device.type == "cuda":
                mfu = flops_per_token(ours.cfg, args.seq) * tokens / t_ours / (H100_BF16_DENSE_TFLOPS * 1e12)
                line += f" {100 * mfu:>9.1f}%"
            print(line, flush=True)
            del hf, ours


if __name__ == "__main__":
    main()
