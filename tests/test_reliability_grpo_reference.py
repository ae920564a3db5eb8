"""GRPO's reference policy is part of its checkpoint: a damaged reference copy must make the
resume fall back to the previous good checkpoint (whose reference is fine), naming the file, as a
damaged policy piece does, and the run must then equal an unbroken one (it stopped with an error)."""
import json
import os
import struct
import subprocess
import sys

import pytest

from r1mega.config import load_config
from r1mega.rl.grpo import grpo

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny", "r1_zero_demo.yaml")
TIMES = ("step_seconds", "tok/s")


def settings(tmp_path, name, steps):
    return [f"data.cache_dir={tmp_path / 'data'}", f"train.run_dir={tmp_path / name}", f"train.steps={steps}",
            "train.save_interval=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.kl_coef=0.05",
            "rl.ref_refresh_steps=4", "data.synthetic_docs=300"]


def run(tmp_path, name, steps, *extra):
    grpo(load_config(CONFIG, settings(tmp_path, name, steps) + list(extra)), eval_problems=0)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMES)} for r in rows]


def flip(path):
    b = bytearray(open(path, "rb").read())
    b[-8] ^= 0x01  # a bit of the last tensor's data
    open(path, "wb").write(bytes(b))


def test_a_damaged_reference_falls_back_and_the_run_continues_exactly(tmp_path, capfd):
    unbroken = run(tmp_path, "a", 6)
    run(tmp_path, "b", 4)  # step 2 (reference of step 0), step 4 (reference of step 4)
    ref = tmp_path / "b" / "checkpoints" / "reference" / "step_00000004" / "rank00000.safetensors"
    flip(ref)
    capfd.readouterr()
    assert run(tmp_path, "b", 6) == unbroken
    err = capfd.readouterr().err
    assert "step_00000004 is unusable" in err and str(ref) in err
    # saved again once (the step-6 checkpoint reuses it), the damaged copy kept aside
    assert sorted(os.listdir(ref.parent.parent)) == ["latest", "step_00000000", "step_00000004",
                                                     "step_00000004.replaced"]
    # the redone step 4 saved a good reference again (the damaged one kept aside), so a later resume is clean
    assert run(tmp_path, "b", 6) == unbroken
    assert "unusable" not in capfd.readouterr().err


def flip_tensor(path, key):
    b = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", b[:8])[0]
    lo, _ = json.loads(b[8:8 + n])[key]["data_offsets"]
    b[8 + n + lo + 4] ^= 0x40
    open(path, "wb").write(bytes(b))


@pytest.mark.slow
def test_a_reference_piece_only_one_rank_reads_does_not_hang_the_save(tmp_path):
    # under EP2 only rank 1 reads expert 7: both ranks must still agree to save the reference again
    # (rank 1 alone entering the collective save hung the run)
    run(tmp_path, "b", 4)
    flip_tensor(tmp_path / "b" / "checkpoints" / "reference" / "step_00000004" / "rank00000.safetensors",
                "model/model.layers.1.mlp.experts.7.down_proj.weight")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
                        "-m", "r1mega.cli", "grpo", "--config", CONFIG, *settings(tmp_path, "b", 6), "parallel.ep=2"],
                       capture_output=True, text=True, timeout=240, cwd=root,
                       env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rank 1:" in r.stderr and "experts.7.down_proj" in r.stderr
    assert "step_00000004.replaced" in os.listdir(tmp_path / "b" / "checkpoints" / "reference")


def test_a_damaged_step0_reference_is_rebuilt_from_the_start_and_the_run_continues_exactly(tmp_path, capfd):
    """Before the first refresh every checkpoint shares the step-0 anchor: one damaged byte in it made
    them all unusable ("no usable checkpoint"). The anchor is the starting weights: rebuilt."""
    unbroken = run(tmp_path, "a", 4)
    run(tmp_path, "b", 2)
    ref = tmp_path / "b" / "checkpoints" / "reference" / "step_00000000" / "rank00000.safetensors"
    flip(ref)
    capfd.readouterr()
    assert run(tmp_path, "b", 4) == unbroken
    err = capfd.readouterr().err
    assert "step_00000000 is unusable" in err and "rebuilding the step-0 reference" in err


def _roll_back(root, to: int) -> None:
    """The run's checkpoints after step `to` moved out of the way, `latest` naming step `to`."""
    for d in os.listdir(root):
        if d.startswith("step_") and int(d.split("_")[1]) > to:
            os.rename(root / d, root / f"old-{d}")
    (root / "latest").write_text(f"step_{to:08d}")


def test_a_refresh_redone_after_a_rollback_is_saved_over_the_abandoned_attempts_copy(tmp_path):
    """A run rolled back past a refresh and taken on with other settings refreshes its reference again;
    the copy the abandoned attempt saved under the same step must not stand for it on a later resume."""
    run(tmp_path, "b", 4)  # refreshes and saves reference/step_00000004
    ckpt = tmp_path / "b" / "checkpoints"
    _roll_back(ckpt, 2)
    second = {r["step"]: r for r in run(tmp_path, "b", 6, "optim.lr=0.03")}  # its own step-4 refresh
    _roll_back(ckpt, 4)
    resumed = {r["step"]: r for r in run(tmp_path, "b", 6, "optim.lr=0.03")}
    assert resumed[5] == second[5] and resumed[6] == second[6]
