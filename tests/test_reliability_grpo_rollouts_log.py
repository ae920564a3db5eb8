"""A GRPO run killed after its checkpoint had appended later steps' rows (and maybe half a line) to
rollouts.jsonl: the resumed run must leave the file an unbroken run writes, each step's rows once
(as metrics.jsonl is), not the lost steps' rows followed by their redraws."""
import json
import os

from r1mega.config import load_config
from r1mega.rl.grpo import grpo

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny", "r1_zero_demo.yaml")


def run(tmp_path, name, steps):
    cfg = load_config(CONFIG, [f"data.cache_dir={tmp_path / 'data'}", f"train.run_dir={tmp_path / name}",
                               f"train.steps={steps}", "train.save_interval=2", "rl.prompts_per_step=2",
                               "rl.group_size=2", "rl.log_rollouts=2", "data.synthetic_docs=300"])
    grpo(cfg, eval_problems=0)
    return tmp_path / name / "rollouts.jsonl"


def test_a_killed_runs_rows_are_not_doubled(tmp_path):
    unbroken = run(tmp_path, "a", 4).read_text()
    rows = [json.loads(line) for line in unbroken.splitlines()]
    assert sorted({r["step"] for r in rows}) == [1, 2, 3, 4]
    killed = run(tmp_path, "b", 2)  # checkpoint at step 2
    with open(killed, "a") as f:  # what the killed run wrote past it: step 3's rows and a torn line
        f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] == 3)
        f.write('{"step": 4, "id": "cut sh')
    resumed = run(tmp_path, "b", 4).read_text()
    assert resumed == unbroken
