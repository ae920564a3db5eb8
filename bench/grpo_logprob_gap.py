"""The sampler/trainer log-prob gap of GRPO in bfloat16, side by side with float32, and what
truncated importance sampling (TIS) does about it.

    python bench/grpo_logprob_gap.py --ckpt runs/demo/pretrain/checkpoints/step_00000400 [--steps 8]

Runs the demo's GRPO (configs/tiny/r1_zero_demo.yaml) from the checkpoint under each setting and
prints, per setting, the gap between the rollout's own log-probs of the sampled tokens and the
training forward's (max and mean over tokens, all steps), the k3 estimate of KL(sampler || trainer)
per token, the share of tokens whose TIS weight hit the cap, and the last step's reward.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from r1mega.config import load_config
from r1mega.rl.grpo import grpo

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny",
                      "r1_zero_demo.yaml")
SETTINGS = {
    "float32": ["train.dtype=float32", "rl.tis=false"],
    "bf16, no TIS": ["train.dtype=bfloat16", "rl.tis=false"],
    "bf16, TIS cap 2": ["train.dtype=bfloat16", "rl.tis=true", "rl.tis_cap=2.0"],
    "bf16, replay, TIS": ["train.dtype=bfloat16", "rl.tis=true", "rl.routing_replay=true"],
    "bf16, exact rollouts": ["train.dtype=bfloat16", "rl.exact_rollouts=true"],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True, help="a pretrained demo checkpoint (r1mega demo / pretrain)")
    p.add_argument("--data", default="runs/data", help="data.cache_dir of that pretraining")
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    rows = []
    for name, overrides in SETTINGS.items():
        with tempfile.TemporaryDirectory() as run:
            cfg = load_config(CONFIG, [f"train.load={args.ckpt}", f"data.cache_dir={args.data}",
                                       f"train.run_dir={run}", f"train.steps={args.steps}", "train.log_interval=1000",
                                       "rl.group_size=16", "rl.prompts_per_step=8", "rl.minibatches=2",
                                       "optim.lr=3e-4", "optim.min_lr=3e-4", "optim.decay=constant",
                                       "optim.warmup_steps=0", "data.micro_batch_size=32", "data.global_batch_size=64",
                                       *overrides])
            grpo(cfg, eval_problems=0)
            steps = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        rows.append((name, max(s["logprob_gap_max"] for s in steps),
                     sum(s["logprob_gap_mean"] for s in steps) / len(steps),
                     sum(s["sampler_kl"] for s in steps) / len(steps),
                     sum(s["tis_capped_frac"] for s in steps) / len(steps), steps[-1]["reward"]))
    print(f"{'setting':<20} {'gap max':>10} {'gap mean':>10} {'KL(s||t)':>10} {'TIS capped':>11} {'reward':>7}")
    for name, gmax, gmean, kl, capped, reward in rows:
        print(f"{name:<20} {gmax:>10.2e} {gmean:>10.2e} {kl:>10.2e} {capped:>11.4f} {reward:>7.3f}")


if __name__ == "__main__":
    main()
