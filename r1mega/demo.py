"""`r1mega demo`: the first thing a new user runs.

Today it builds a tiny random DeepSeek-V3 checkpoint (MoE, MLA, MTP) with `transformers`, then
checks r1mega against it on one process and under TP2 x EP2 on `--nproc` ranks (torchrun, gloo).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from r1mega.models.deepseek_v3.tiny import add_mtp_layer, make_hf_model


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where the tiny checkpoint and logs go")
    p.add_argument("--nproc", type=int, default=4, help="ranks for the parallel check (multiple of 4)")


def _verify(hf_dir: str, nproc: int, layout: list[str]) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "r1mega.cli", "verify-hf", "--hf-dir", hf_dir, *layout]
    print("$", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l and not l.startswith("W")]
    print("\n".join("  " + l for l in lines), flush=True)
    match = re.search(r"max_abs_logit_diff=(\S+)", proc.stdout)
    if proc.returncode or not match:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"verify-hf failed under {' '.join(layout) or 'one process'}")
    return float(match.group(1))


def run(args: argparse.Namespace) -> int:
    if args.nproc % 4:
        raise SystemExit(f"--nproc must be a multiple of 4 (TP2 x EP2), got {args.nproc}")
    hf_dir = os.path.join(args.out, "tiny-deepseek-v3")
    os.makedirs(args.out, exist_ok=True)
    model = make_hf_model("DeepseekV3", seed=0, n_group=2, topk_group=1, routed_scaling_factor=2.5)
    model.save_pretrained(hf_dir)
    add_mtp_layer(hf_dir)
    print(f"tiny DeepSeek-V3 checkpoint (MLA, {model.config.n_routed_experts} routed experts, MTP) -> {hf_dir}")
    worst = max(
        _verify(hf_dir, 1, []),
        _verify(hf_dir, args.nproc, ["--tp", "2", "--ep", "2", "--sp"]),
    )
    print(f"max_abs_logit_diff={worst:.6e}")
    return 0
