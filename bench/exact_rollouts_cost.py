"""What rl.exact_rollouts costs: the GRPO step time with and without it, side by side in one run, on
the demo model (configs/tiny/r1_zero_demo.yaml) and on the DeepSeek-V3 proxy's shapes (bench/proxy.py:
hidden 512, 4 layers, 64 experts top-6 in 8 groups, q_lora 256, kv_lora 128, vocab 8192), random
weights, in float32 and bfloat16. Each step is a rollout (continuous engine), the old log-probs and
one update. Runs alternate default / exact (--repeats pairs, so load drifts hit both alike) and the
table gives the median over all their steps (each run's first step, warm-up, left out) of the wall
time and of this process's CPU time, the ratios, each mode's largest sampler/trainer log-prob gap,
and the load average over the run (the machine may be shared: read the ratios with it).

    python bench/exact_rollouts_cost.py [--steps 6] [--repeats 3] [--models demo proxy] [--dtypes float32 bfloat16]
"""
from __future__ import annotations

import argparse
import json
import linecache
import os
import statistics
import sys
import tempfile
import time

import torch

from r1mega.config import load_config
from r1mega.rl import grpo as grpo_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny", "r1_zero_demo.yaml")
MODELS = {
    "demo": ["rl.group_size=8", "rl.prompts_per_step=8", "rl.max_new_tokens=8",
             "data.micro_batch_size=16", "data.global_batch_size=64"],
    "proxy": ["model.vocab_size=8192", "model.hidden_size=512", "model.intermediate_size=1024",
              "model.moe_intermediate_size=256", "model.num_layers=4", "model.num_heads=8", "model.q_lora_rank=256",
              "model.kv_lora_rank=128", "model.qk_nope_head_dim=64", "model.qk_rope_head_dim=32",
              "model.v_head_dim=64", "model.n_routed_experts=64", "model.num_experts_per_tok=6", "model.n_group=8",
              "model.topk_group=4", "model.first_k_dense_replace=1", "model.num_mtp_layers=0",
              "rl.group_size=8", "rl.prompts_per_step=4", "rl.max_new_tokens=32",
              "data.micro_batch_size=8", "data.global_batch_size=32"],
}


class _StepClock:
    """Stands in for grpo's `time` module: its perf_counter also notes this process's CPU time, so a
    step's CPU seconds come beside the wall seconds grpo logs (a step ends where grpo's source reads
    `perf_counter() - t0`; every other read starts one)."""

    def __init__(self):
        self.steps: list[tuple[float, float]] = []  # (wall, cpu) per step
        self._last = (time.perf_counter(), time.process_time())

    def perf_counter(self) -> float:
        now = (time.perf_counter(), time.process_time())
        caller = sys._getframe(1)
        if "perf_counter() - t0" in linecache.getline(caller.f_code.co_filename, caller.f_lineno):
            self.steps.append((now[0] - self._last[0], now[1] - self._last[1]))
        else:
            self._last = now
        return now[0]

    def __getattr__(self, name):
        return getattr(time, name)


def run(model: str, dtype: str, exact: bool, steps: int, data: str) -> tuple[list[tuple[float, float]], float]:
    """Per-step (wall, cpu) seconds after the first step, and the largest log-prob gap."""
    clock = _StepClock()
    grpo_module.time = clock
    try:
        with tempfile.TemporaryDirectory() as d:
            cfg = load_config(CONFIG, [f"train.run_dir={d}", f"data.cache_dir={data}", f"train.steps={steps}",
                                       "train.log_interval=1000", "rl.updates_per_rollout=1", "rl.entropy_coef=0.01",
                                       "data.synthetic_docs=300", f"train.dtype={dtype}",
                                       f"rl.exact_rollouts={str(exact).lower()}", *MODELS[model]])
            grpo_module.grpo(cfg, eval_problems=0)
            rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    finally:
        grpo_module.time = time
    if len(clock.steps) != len(rows):
        raise RuntimeError(f"timed {len(clock.steps)} steps of {len(rows)}: grpo's step timer moved")
    return clock.steps[1:], max(r["logprob_gap_max"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="default/exact run pairs, interleaved")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':<6} {'dtype':<9} {'default s':>9} {'exact s':>8} {'ratio':>6} {'default cpu':>11} "
          f"{'exact cpu':>9} {'cpu ratio':>9} {'gap default':>11} {'gap exact':>9} {'load':>9}")
    with tempfile.TemporaryDirectory() as data:
        for model in args.models:
            for dtype in args.dtypes:
                times: dict[bool, list] = {False: [], True: []}
                gaps = {False: 0.0, True: 0.0}
                loads = [os.getloadavg()[0]]
                for _ in range(args.repeats):
                    for exact in (False, True):
                        got, gap = run(model, dtype, exact, args.steps, data)
                        times[exact] += got
                        gaps[exact] = max(gaps[exact], gap)
                        loads.append(os.getloadavg()[0])
                wall = {e: statistics.median(w for w, _ in times[e]) for e in times}
                cpu = {e: statistics.median(c for _, c in times[e]) for e in times}
                print(f"{model:<6} {dtype:<9} {wall[False]:>9.3f} {wall[True]:>8.3f} {wall[True] / wall[False]:>6.2f} "
                      f"{cpu[False]:>11.3f} {cpu[True]:>9.3f} {cpu[True] / cpu[False]:>9.2f} {gaps[False]:>11.2e} "
                      f"{gaps[True]:>9.2e} {min(loads):>4.1f}-{max(loads):<4.1f}", flush=True)


if __name__ == "__main__":
    main()
