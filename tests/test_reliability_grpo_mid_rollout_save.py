"""A GRPO rollout feeds rl.minibatches optimizer steps (R1's stage configs: 16, save_interval 100).
A checkpoint saved inside a rollout resumed with the next rollout, so a job killed after it never
trained the rollout's remaining minibatches and diverged from an unbroken run. Killed after any
checkpoint, a resumed run must equal the unbroken one."""
import json
import os
import shutil

from r1mega.config import load_config
from r1mega.rl.grpo import grpo

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny", "r1_zero_demo.yaml")
TIMES = ("step_seconds", "tok/s")


def run(run_dir, steps=4):
    cfg = load_config(CONFIG, [f"data.cache_dir={os.path.dirname(run_dir)}/data", f"train.run_dir={run_dir}",
                               f"train.steps={steps}", "train.save_interval=1", "rl.minibatches=2",
                               "rl.prompts_per_step=2", "rl.group_size=2", "data.synthetic_docs=300"])
    grpo(cfg, eval_problems=0)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMES)} for r in rows]


def test_killed_after_any_checkpoint_the_run_resumes_exactly(tmp_path):
    unbroken = run(str(tmp_path / "a"))
    ckpts = tmp_path / "a" / "checkpoints"
    saved = sorted(e for e in os.listdir(ckpts) if e.startswith("step_"))
    assert saved and saved[-1] == "step_00000004"
    for name in saved[:-1]:  # killed right after this save: the newer ones never happened
        killed = tmp_path / f"killed_{name}"
        shutil.copytree(tmp_path / "a", killed)
        for later in saved[saved.index(name) + 1:]:
            shutil.rmtree(killed / "checkpoints" / later)
        (killed / "checkpoints" / "latest").write_text(name)
        assert run(str(killed)) == unbroken, f"resumed from {name}"
