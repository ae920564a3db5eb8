"""`r1mega demo`: the first thing a new user runs - R1-Zero in miniature, on CPU, in minutes.

1. pretrain a tiny DeepSeek-V3 MoE (MLA, routed + shared experts, MTP) on single-digit sums whose
   written answers are mostly off by one (`configs/tiny/r1_zero_demo.yaml`);
2. GRPO from that model with an exact-answer reward, rollouts on the same sharded weights;
3. report greedy accuracy on held-out sums (never used as RL prompts) before and after, per
   step in the log, in `runs/demo/grpo/metrics.jsonl` (and wandb offline if installed), and as a
   PNG plot. `--nproc 4` runs both stages on 4 ranks (TP2 x EP2).
The last line is `accuracy_before=<float> accuracy_after=<float>`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys

from r1mega.errors import ConfigError

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny",
                      "r1_zero_demo.yaml")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run directory (data, checkpoints, logs, plot)")
    p.add_argument("--nproc", type=int, default=1, help="ranks (1, or 4 for TP2 x EP2)")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--config", default=CONFIG)


def _run(kind: str, config: str, overrides: list[str], nproc: int) -> str:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "r1mega.cli", kind, "--config", config, *overrides,
               "parallel.tp=2", f"parallel.ep={2 if nproc >= 4 else 1}"]
    else:
        cmd = [sys.executable, "-m", "r1mega.cli", kind, "--config", config, *overrides]
    print("$ r1mega " + " ".join(cmd[cmd.index(kind):]), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(proc.stdout, end="", flush=True)
    if proc.returncode:
        raise SystemExit(f"demo: {kind} failed (exit {proc.returncode})")
    return proc.stdout


def plot(metrics_file: str, png: str, before: float, after: float, steps: int) -> None:
    from r1mega.plotting import saved_figure

    rows = [json.loads(line) for line in open(metrics_file)]
    evals = [(0, before)] + [(r["step"], r["heldout_accuracy"]) for r in rows if "heldout_accuracy" in r]
    evals.append((steps, after))
    with saved_figure(png, (7, 4)) as ax:
        ax.plot([r["step"] for r in rows], [r["reward"] for r in rows], label="rollout reward (train prompts)")
        ax.plot([s for s, _ in evals], [a for _, a in evals], "o-", label="held-out greedy accuracy")
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("r1mega demo: R1-Zero-style GRPO on a tiny DeepSeek-V3 MoE")
        ax.legend()


def run(args: argparse.Namespace) -> int:
    if args.nproc not in (1, 2, 4):
        raise ConfigError("--nproc", f"must be 1, 2 (TP2) or 4 (TP2 x EP2), got {args.nproc}")
    for flag, v in (("--pretrain-steps", args.pretrain_steps), ("--grpo-steps", args.grpo_steps)):
        if v < 1:
            raise ConfigError(flag, f"must be >= 1, got {v}")
    out = os.path.abspath(args.out)
    data = [f"data.cache_dir={out}/data"]
    _run("pretrain", args.config, data + [f"train.run_dir={out}/pretrain", f"train.steps={args.pretrain_steps}",
                             "train.log_interval=50"], args.nproc)
    ckpt = f"{out}/pretrain/checkpoints/step_{args.pretrain_steps:08d}"
    grpo_dir = f"{out}/grpo"
    # RL settings of the demo: 16 samples x 8 prompts per step, constant lr 3e-4, no KL (as R1-Zero's
    # rule-based setting allows), microbatches of 32 sequences, the routing biases kept as pretraining left
    # them (as configs/stage/r1_zero.yaml keeps them)
    rl = ["optim.lr=3e-4", "optim.min_lr=3e-4", "optim.decay=constant", "optim.warmup_steps=0",
          "rl.group_size=16", "rl.prompts_per_step=8", "data.micro_batch_size=32", "data.global_batch_size=64",
          "model.bias_update_rate=0"]
    if importlib.util.find_spec("wandb") is not None:  # offline unless WANDB_MODE says otherwise
        rl.append("train.wandb=true")
    text = _run("grpo", args.config, data + rl + [f"train.run_dir={grpo_dir}", f"train.load={ckpt}",
                                     f"train.steps={args.grpo_steps}", "train.log_interval=5"], args.nproc)
    m = re.search(r"accuracy_before=(\S+) accuracy_after=(\S+)", text)
    if not m:
        raise SystemExit("demo: the GRPO stage did not report accuracies")
    before, after = float(m.group(1)), float(m.group(2))
    png = os.path.join(grpo_dir, "curves.png")
    plot(os.path.join(grpo_dir, "metrics.jsonl"), png, before, after, args.grpo_steps)
    print(f"plot: {png}")
    print(f"accuracy_before={before:.4f} accuracy_after={after:.4f}")
    return 0
