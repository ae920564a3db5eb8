"""What rl.exact_rollouts costs: the GRPO step time with and without it, side by side in one run, on
the demo model (configs/tiny/r1_zero_demo.yaml) and on the DeepSeek-V3 proxy's shapes (bench/proxy.py:
hidden 512, 4 layers, 64 experts top-6 in 8 groups, q_lora 256, kv_lora 128, vocab 8192), random
weights, in float32 and bfloat16. Each step is a rollout (continuous engine), the old log-probs and
one update. Prints the median step time of each (the first step, warm-up, left out), their ratio and
each run's largest sampler/trainer log-prob gap.

    python bench/exact_rollouts_cost.py [--steps 6] [--models demo proxy] [--dtypes float32 bfloat16]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch

from r1mega.config import load_config
from r1mega.rl.grpo import grpo

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


def run(model: str, dtype: str, exact: bool, steps: int, data: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(CONFIG, [f"train.run_dir={d}", f"data.cache_dir={data}", f"train.steps={steps}",
                                   "train.log_interval=1000", "rl.updates_per_rollout=1", "rl.entropy_coef=0.01",
                                   "data.synthetic_docs=300", f"train.dtype={dtype}",
                                   f"rl.exact_rollouts={str(exact).lower()}", *MODELS[model]])
        grpo(cfg, eval_problems=0)
        rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    return statistics.median(r["step_seconds"] for r in rows[1:]), max(r["logprob_gap_max"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':<6} {'dtype':<9} {'default s/step':>14} {'exact s/step':>13} {'ratio':>6} "
          f"{'gap default':>12} {'gap exact':>10}")
    with tempfile.TemporaryDirectory() as data:
        for model in args.models:
            for dtype in args.dtypes:
                base, gap0 = run(model, dtype, False, args.steps, data)
                exact, gap1 = run(model, dtype, True, args.steps, data)
                print(f"{model:<6} {dtype:<9} {base:>14.3f} {exact:>13.3f} {exact / base:>6.2f} "
                      f"{gap0:>12.2e} {gap1:>10.2e}", flush=True)


if __name__ == "__main__":
    main()
