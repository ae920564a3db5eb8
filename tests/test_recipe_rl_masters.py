"""GRPO from a model (train.load) trained in float32, run in bfloat16 as every R1 stage config does:
the start "reset" the optimizer from the parameters, which are bf16 copies, so the fp32 master weights
the checkpoint holds were rounded to bf16 before the first update (93 of 95 tensors of the tiny MoE).
Only the moments start fresh now; the masters stay the checkpoint's (with lr 0 and no routing-bias
update the saved masters equal the loaded ones bit for bit)."""
from __future__ import annotations

import glob
import os

import torch
from safetensors.torch import load_file

from cli_in_process import run_main
from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny", "r1_pipeline_model.yaml")


def _run(kind: str, *overrides: str) -> None:
    r = run_main(main, [kind, "--config", CONFIG, *overrides])  # `r1mega KIND ...` in this process
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_bf16_grpo_keeps_the_loaded_fp32_master_weights(tmp_path):
    data = [f"data.cache_dir={tmp_path}/data", "data.synthetic_docs=200"]
    _run("pretrain", *data, f"train.run_dir={tmp_path}/base", "train.steps=2")
    ckpt = os.path.join(tmp_path, "base", "checkpoints", "step_00000002")
    _run("grpo", *data, f"train.load={ckpt}", f"train.run_dir={tmp_path}/rl", "train.steps=1", "train.dtype=bfloat16",
         "rl.group_size=2", "rl.prompts_per_step=2", "rl.max_new_tokens=8", "data.micro_batch_size=4",
         "data.global_batch_size=4", "optim.lr=0", "optim.min_lr=0", "optim.warmup_steps=0",
         "model.bias_update_rate=0")
    before = load_file(os.path.join(ckpt, "rank00000.safetensors"))
    after = load_file(glob.glob(os.path.join(tmp_path, "rl", "checkpoints", "step_*", "rank00000.safetensors"))[0])
    masters = [k for k in before if k.startswith("model/")]
    changed = [k for k in masters if not torch.equal(before[k], after[k])]
    assert masters and not changed, f"{len(changed)} of {len(masters)} master tensors changed, e.g. {changed[:3]}"
