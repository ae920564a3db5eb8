"""A training stage started from another kind of run's checkpoint (`train.load`): SFT of a pretrained
model, as configs/tiny/sft.yaml says ("Starts from scratch unless train.load points at a pretraining
checkpoint") and the R1 stage configs do (cold-start SFT of the base, rejection-sampling SFT). The
trainer resumed the loaded checkpoint's step, consumed samples and optimizer moments as if it were
this run's own: `r1mega sft --config configs/tiny/sft.yaml train.load=<pretrain step 80>` printed
"run ... is complete: ... at step 80 and train.steps=60" and trained nothing; with more steps it
started mid-schedule with the pretraining moments. Weights of another kind of run now start the
run at step 0 with fresh moments, as GRPO starts from a pretrained or SFT model (`r1mega pipeline`
made weights-only copies to get this). A checkpoint of the same kind still continues (a pretraining
run moved to another run_dir or layout, DeepSeek-V3.2's warm-up -> sparse)."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import torch

from cli_in_process import run_main
from r1mega.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "tiny")


def _run(kind: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    r = run_main(main, [kind, "--config", os.path.join(CONFIGS, config), *overrides])  # `r1mega KIND ...` here
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def _steps(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage_load")
    shared = [f"data.cache_dir={root}/data", "data.synthetic_docs=200", "model.num_layers=2"]
    _run("pretrain", "pretrain.yaml", *shared, f"train.run_dir={root}/pre", "train.steps=4")
    return root, shared, os.path.join(root, "pre", "checkpoints", "step_00000004")


def test_sft_from_a_pretraining_checkpoint_starts_at_step_zero(pretrained):
    root, shared, ckpt = pretrained
    run_dir = os.path.join(root, "sft")
    r = _run("sft", "sft.yaml", *shared, f"train.run_dir={run_dir}", f"train.load={ckpt}", "train.steps=3",
             "optim.warmup_steps=2")
    assert "is complete" not in r.stdout and "final_loss=" in r.stdout, r.stdout[-1000:]
    # what the steps amount to, for setting the recipe's 2 epochs
    m = re.search(r"sft: \d+ conversations in (\d+) packed rows of 96 tokens; train.steps=3 x 8 rows = ([\d.]+) "
                  r"epochs", r.stdout)
    assert m and float(m.group(2)) == round(3 * 8 / int(m.group(1)), 2), r.stdout[-1000:]
    steps = _steps(run_dir)
    assert [s["step"] for s in steps] == [1, 2, 3]
    with open(os.path.join(run_dir, "checkpoints", "step_00000003", "meta.json")) as f:
        meta = json.load(f)
    # its own schedule and data from the start, its optimizer counting only its own steps
    assert meta["kind"] == "sft" and meta["optimizer_step"] == 3 and meta["consumed_samples"] == 3 * 8, meta
    assert steps[0]["lr"] < steps[1]["lr"], "the warm-up did not start at this run's step 0"


def test_pretraining_continued_from_its_checkpoint_keeps_its_step(pretrained):
    root, shared, ckpt = pretrained
    run_dir = os.path.join(root, "more")
    _run("pretrain", "pretrain.yaml", *shared, f"train.run_dir={run_dir}", f"train.load={ckpt}", "train.steps=5")
    assert [s["step"] for s in _steps(run_dir)] == [5]


def test_a_bf16_sft_keeps_the_loaded_fp32_master_weights(pretrained):
    """Fresh moments only: the fp32 masters are the checkpoint's, not the bf16 parameters' rounding
    (with lr 0 and no routing-bias update the saved masters equal the loaded ones bit for bit)."""
    from safetensors.torch import load_file

    root, shared, ckpt = pretrained
    run_dir = os.path.join(root, "bf16")
    _run("sft", "sft.yaml", *shared, f"train.run_dir={run_dir}", f"train.load={ckpt}", "train.steps=1",
         "train.dtype=bfloat16", "optim.lr=0", "optim.min_lr=0", "optim.warmup_steps=0", "model.bias_update_rate=0")
    before = load_file(os.path.join(ckpt, "rank00000.safetensors"))
    after = load_file(os.path.join(run_dir, "checkpoints", "step_00000001", "rank00000.safetensors"))
    masters = [k for k in before if k.startswith("model/")]
    assert masters and all(torch.equal(before[k], after[k]) for k in masters), \
        [k for k in masters if not torch.equal(before[k], after[k])][:5]
