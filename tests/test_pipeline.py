"""`r1mega pipeline` end to end: the shipped tiny config on seed 1, every stage run and evaluated on
the 300 held-out sums, the paper's qualitative effects asserted (R1-Zero and cold-start SFT above the
base, reasoning RL at least cold-start SFT, the distilled student above its own base), kept samples
carrying their thought, the table and plot written, and a rerun skipping every finished stage. The
task's splits and thoughts, the stage-options rule and bad pipeline configs are fast tests."""
import json
import os
import re
import sys

import pytest
import yaml

from r1mega.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny", "r1_pipeline.yaml")


def _pipeline_command(root):
    # the shipped config as the README measures it (its seed-1 row); about 5 CPU minutes
    cmd = [sys.executable, "-m", "r1mega.cli", "pipeline", "--config", CONFIG, "--out", str(root / "run"), "--seed", "1"]
    return cmd, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}, REPO


@pytest.mark.slow
@pytest.mark.background_command(make=_pipeline_command)  # runs beside the other tests (tests/background_runs.py)
def test_pipeline_shows_each_stage_effect_and_resumes(background_run):
    out = background_run.root / "run"
    proc = background_run.wait(timeout=3000)
    cmd = proc.args
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"stages=10 final_stage=(\w+) pass@1=(\S+) cons@8=(\S+)", last), last
    rows = {r["stage"]: r for r in json.loads((out / "table.json").read_text())}
    if "note" in rows["student_base"]:  # a checkout without the dense students skips distillation
        assert "no dense student" in rows["student_base"]["note"]
        assert rows["distill"]["note"] == "skipped: stage student_base was skipped"
    scored = [n for n, r in rows.items() if r["kind"] != "reject_sample" and "note" not in r]
    for name in scored:
        r = rows[name]
        assert 0 <= r["pass@1"] <= r["pass@8"] <= 1 and 0 <= r["cons@8"] <= 1, r
        evaluated = list((out / "eval").glob(f"*/{name}/heldout/summary.json"))  # one protocol
        assert len(evaluated) == 1, evaluated
        s = json.loads(evaluated[0].read_text())
        assert s["pass@1"] == r["pass@1"] and s["problems"] == 300 and s["samples"] == 8
    p = {n: rows[n]["pass@1"] for n in scored}
    # the paper's effects, with margins far outside the seed-to-seed spread the README measures
    assert p["r1_zero"] > p["base"] + 0.3, p
    assert p["cold_start_sft"] > p["base"] + 0.3, p
    # reasoning RL keeps cold-start SFT's level: both sit near 0.95 where pass@1 saturates, and another
    # CPU's floats take another trajectory (README: +0.03 / +0.09 on two seeds on one CPU; seed 1 on an
    # AMD EPYC gave 0.9592 against 0.9600, two of 2,400 samples), so within 0.02, not a strict gain
    assert p["reasoning_rl"] >= p["cold_start_sft"] - 0.02, p
    if "distill" in p:
        assert p["distill"] > p["student_base"] + 0.3, p
    for data in ("cold_start_data", "rejection_data"):
        report = json.loads((out / data / "report.json").read_text())
        assert report["total"] == 700 * 8 and 0 < report["kept"] <= 700 * 8
        assert report["kept"] + sum(report["rejected"].values()) == report["total"]
        kept = [json.loads(line) for line in open(out / data / "sft.jsonl")]
        assert len(kept) == report["kept"]
        for rec in kept:  # SFT trains the thought and the answer, as sampled
            reply = rec["messages"][-1]["content"]
            assert re.fullmatch(r"\s*<think>\S.*</think> A: \d+\n?", reply), reply
            assert rec["completion_ids"]
    assert (out / "stages.png").stat().st_size > 10_000
    assert (out / "table.md").read_text().startswith("| stage |")
    # a rerun skips every stage and reports the same numbers (main() in this process: it starts no
    # stage, and the first run above is the command as a user starts it)
    from cli_in_process import run_main
    from r1mega.cli import main

    again = run_main(main, cmd[cmd.index("pipeline"):], cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, skipped") == sum("note" not in r for r in rows.values())
    assert again.stdout.strip().splitlines()[-1] == last


def test_sum3_task_splits_and_worked_thoughts():
    """The pipeline's task: 700 RL and 300 held-out sums, disjoint and complete; every corpus line is a
    well-formed thought then the answer the judge reads after </think> (the thought's last result),
    the first step always right and the last mostly one too high; the demo's task is unchanged."""
    from r1mega.data.synthetic import biased_sum3_corpus
    from r1mega.judge import final_answer, well_formed
    from r1mega.data.synthetic import addition_prompts, synthetic_prompts

    train, held = synthetic_prompts("sum3", 0, 0, False), synthetic_prompts("sum3", 0, 0, True)
    assert (len(train), len(held)) == (700, 300)
    assert len({r["prompt"] for r in train + held}) == 1000
    for r in held:
        a, b, c = map(int, re.fullmatch(r"Q: (\d)\+(\d)\+(\d)=", r["prompt"]).groups())
        assert r["answer"] == str(a + b + c)
    drawn = synthetic_prompts("sum3", 50, 7, False)
    assert drawn == synthetic_prompts("sum3", 50, 7, False) and {r["prompt"] for r in drawn} <= {r["prompt"] for r in train}
    assert synthetic_prompts("addition", 0, 0, True) == addition_prompts(0, 0, heldout=True)  # 30, as `r1mega demo`
    right = lines = 0
    for doc in biased_sum3_corpus(300):
        for line in doc.split("\n"):
            m = re.fullmatch(r"Q: (\d)\+(\d)\+(\d)=( <think>(\d+)\+(\d)=(\d+), (\d+)\+(\d)=(\d+)</think> A: (\d+))", line)
            assert m, line
            a, b, c, response, a2, b2, ab, ab2, c2, last, answer = m.groups()
            assert (a2, b2, ab, ab2, c2) == (a, b, str(int(a) + int(b)), ab, c) and answer == last
            assert int(last) - (int(a) + int(b) + int(c)) in (0, 1)
            assert well_formed(response) and final_answer(response) == answer
            assert final_answer(response.replace(f"A: {answer}", "")) is None  # the thought's numbers are not an answer
            right += int(last) == int(a) + int(b) + int(c)
            lines += 1
    assert 0.25 < right / lines < 0.35, right / lines


def test_stage_options_name_what_a_stage_ran_with():
    """A finished stage is reused only for the options it ran with: its entry, the settings of its own
    kind and --seed. New RL settings keep the pretrained base; a new seed or SFT setting does not."""
    from r1mega.recipe import _stage_options

    cfg = yaml.safe_load(open(CONFIG))
    st = {s["name"]: s for s in cfg["stages"]}
    other_rl = {**cfg, "rl_common": [*cfg["rl_common"], "rl.top_p=0.9"]}
    other_sft = {**cfg, "sft_common": [*cfg["sft_common"], "optim.lr=5e-4"]}
    for name in ("base", "student_base"):
        assert _stage_options(other_rl, st[name]) == _stage_options(other_sft, st[name]) == _stage_options(cfg, st[name])
    assert _stage_options(other_rl, st["r1_zero"]) != _stage_options(cfg, st["r1_zero"])
    assert _stage_options(other_sft, st["r1_zero"]) == _stage_options(cfg, st["r1_zero"])
    assert _stage_options(other_sft, st["distill"]) != _stage_options(cfg, st["distill"])
    assert _stage_options(cfg, st["base"], 1) != _stage_options(cfg, st["base"], 2) != _stage_options(cfg, st["base"])
    # a stage built on a changed stage is stale: its upstream's options are part of its own
    assert _stage_options(cfg, st["rejection_data"], None, ("a",)) != _stage_options(cfg, st["rejection_data"], None, ("b",))


def test_bad_pipeline_configs_are_named(tmp_path):
    from r1mega.recipe import load_pipeline

    def bad(cfg, key):
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError) as e:
            load_pipeline(str(p))
        assert e.value.key == key, e.value

    base = {"model_config": "x.yaml", "stages": [{"name": "base", "kind": "pretrain"}]}
    bad({**base, "epochs": 3}, "epochs")
    bad({**base, "stages": [{"name": "base", "kind": "pretrian"}]}, "stages[0].kind")
    bad({**base, "stages": [*base["stages"], {"name": "rl", "kind": "grpo", "from": "sft"}]}, "stages[1].from")
    bad({**base, "stages": [*base["stages"], {"name": "sft", "kind": "sft", "from": "base", "data": "base"}]},
        "stages[1].data")
    bad({**base, "stages": [*base["stages"], {"name": "base", "kind": "grpo", "from": "base"}]}, "stages[1].name")
    bad({**base, "stages": [{"name": "base", "kind": "pretrain", "step": 3}]}, "stages[0].step")
