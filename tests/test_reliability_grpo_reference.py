"""GRPO's reference policy is part of its checkpoint: a damaged reference copy must make the
resume fall back to the previous good checkpoint (whose reference is fine), naming the file, as a
damaged policy piece does, and the run must then equal an unbroken one (it stopped with an error)."""
import json
import os

from r1mega.config import load_config
from r1mega.rl.grpo import grpo

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny", "r1_zero_demo.yaml")
TIMES = ("step_seconds", "tok/s")


def run(tmp_path, name, steps):
    cfg = load_config(CONFIG, [f"data.cache_dir={tmp_path / 'data'}", f"train.run_dir={tmp_path / name}",
                               f"train.steps={steps}", "train.save_interval=2", "rl.prompts_per_step=2",
                               "rl.group_size=2", "rl.kl_coef=0.05", "rl.ref_refresh_steps=3",
                               "data.synthetic_docs=300"])
    grpo(cfg, eval_problems=0)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMES)} for r in rows]


def flip(path):
    b = bytearray(open(path, "rb").read())
    b[-8] ^= 0x01  # a bit of the last tensor's data
    open(path, "wb").write(bytes(b))


def test_a_damaged_reference_falls_back_and_the_run_continues_exactly(tmp_path, capfd):
    unbroken = run(tmp_path, "a", 6)
    run(tmp_path, "b", 4)  # step 2 (reference of step 0), step 4 (reference of step 3)
    ref = tmp_path / "b" / "checkpoints" / "reference" / "step_00000003" / "rank00000.safetensors"
    flip(ref)
    capfd.readouterr()
    assert run(tmp_path, "b", 6) == unbroken
    err = capfd.readouterr().err
    assert "step_00000004 is unusable" in err and str(ref) in err
    # the redone step 4 saved a good reference again (the damaged one kept aside), so a later resume is clean
    assert run(tmp_path, "b", 6) == unbroken
    assert "unusable" not in capfd.readouterr().err
