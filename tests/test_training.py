"""Training end to end: loss falls, resume is exact, a crash mid-save loses nothing, layouts switch."""
import os
import subprocess
import sys

import pytest
import torch

from r1mega.config import load_config
from spawn_cases import run_ranks
from r1mega.train.checkpoint import latest_checkpoint
from r1mega.train.trainer import train
from train_workers import crash_during_save_worker, train_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def tiny(kind, run_dir, cache, *overrides):
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", f"{kind}.yaml"),
                      [f"train.run_dir={run_dir}", f"data.cache_dir={cache}", *overrides])
    return cfg


def test_tiny_pretraining_loss_falls(shipped_tiny_pretraining):
    out = shipped_tiny_pretraining
    first, last = sum(out["losses"][:5]) / 5, sum(out["losses"][-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert out["skipped"] == 0


def test_tiny_sft_assistant_loss_falls(tmp_path, data_cache):
    out = train(tiny("sft", tmp_path, data_cache), "sft")
    first, last = sum(out["losses"][:5]) / 5, sum(out["losses"][-5:]) / 5
    assert last < 0.6 * first, (first, last)


def small(run_dir, cache, par=None, steps=6, **train_extra):
    return {
        "model": dict(vocab_size=384, num_layers=3, num_mtp_layers=1, n_group=2, topk_group=1),
        "parallel": par or {},
        "data": dict(synthetic="arithmetic", synthetic_docs=2000, cache_dir=cache, seq_length=32,
                     micro_batch_size=2, global_batch_size=8),
        "optim": dict(lr=3e-3, warmup_steps=2),
        "train": dict(steps=steps, run_dir=str(run_dir), save_interval=3, **train_extra),
    }


def test_resume_after_kill_mid_save_is_exact_and_other_layouts_load(tmp_path, data_cache):
    train(tiny("pretrain", tmp_path / "warm", data_cache, "train.steps=1"), "pretrain")  # builds the data once
    straight = run_ranks(train_worker, 2, small(tmp_path / "a", data_cache))[0]["losses"]
    assert len(straight) == 6

    # kill -9 in the middle of writing the step-6 checkpoint: step 3 stays the latest
    with pytest.raises(Exception):
        run_ranks(crash_during_save_worker, 2, small(tmp_path / "b", data_cache))
    ckpts = tmp_path / "b" / "checkpoints"
    assert latest_checkpoint(str(ckpts)).endswith("step_00000003")
    assert (ckpts / ".step_00000006.tmp").exists() and not (ckpts / "step_00000006").exists()

    resumed = run_ranks(train_worker, 2, small(tmp_path / "b", data_cache))[0]["losses"]
    assert resumed == straight[3:]  # bit-exact: same layout, fp32 master weights, data position

    # another layout: TP2 x EP2 (SP), from the same step-3 checkpoint
    other = small(tmp_path / "c", data_cache, par=dict(tp=2, ep=2, sp=True),
                  load=str(tmp_path / "a" / "checkpoints" / "step_00000003"))
    relaid = run_ranks(train_worker, 4, other)[0]["losses"]
    torch.testing.assert_close(torch.tensor(relaid), torch.tensor(straight[3:]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_torchrun_pretrain_tp2_ep2_sp(tmp_path, data_cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           "-m", "r1mega.cli", "pretrain", "--config", os.path.join(ROOT, "configs/tiny/pretrain.yaml"),
           "parallel.tp=2", "parallel.ep=2", "parallel.sp=true", "train.steps=12",
           f"train.run_dir={tmp_path}/pre", f"data.cache_dir={data_cache}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("final_loss=") and last.endswith("steps=12")
    assert os.path.exists(f"{tmp_path}/pre/checkpoints/step_00000012/meta.json")
