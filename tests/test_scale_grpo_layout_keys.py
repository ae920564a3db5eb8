"""Scale probe: GRPO checked data.seq_length and data.global_batch_size, keys it never reads (its rows
are its rollouts), by the pretraining rules: R1-Zero (configs/stage/r1_zero.yaml) on the README's
1,024-GPU layout (tp 8 + SP, cp 4) was refused because the default data.seq_length (16) does not split
over 2 x cp x tp = 64, and a data.global_batch_size that is no multiple of dp x micro_batch_size refused
any GRPO run. GRPO's shapes come from rl.* (and `grpo --dry-run` plans them)."""
import os

from r1mega.config import ConfigError, load_config, validate_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_LAYOUT = ["parallel.tp=8", "parallel.sp=true", "parallel.cp=4", "parallel.pp=16", "parallel.ep=64",
                 "parallel.etp=1"]


def test_r1_zero_on_the_readme_layout_passes_the_dry_run_validation(capsys):
    from r1mega.cli import main

    configs = ["--config", os.path.join(ROOT, "configs/model/deepseek_v3_671b.yaml"),
               "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml")]
    rc = main(["grpo", *configs, "--dry-run", "--world", "1024", *README_LAYOUT, "train.recompute=full",
               "rl.rollout_cache_tokens=1000000", "rl.max_new_tokens_schedule=[]"])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert "rows of 32768 tokens" in out.out
    # the pretraining command keeps the rule: its rows are data.seq_length long
    cfg = load_config([configs[1], configs[3]], README_LAYOUT)
    try:
        validate_training(cfg, 1024, needs_data=False)
    except ConfigError as e:
        assert e.key == "data.seq_length"
    else:
        raise AssertionError("a 16-token data.seq_length on cp 4 x tp 8 + SP passed the pretraining rules")


def test_a_grpo_run_ignores_the_pretraining_batch_keys(tmp_path):
    argv = ["grpo", "--config", os.path.join(ROOT, "configs/tiny/r1_zero_demo.yaml"),
            "train.steps=1", f"train.run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'data'}",
            "data.synthetic_docs=300", "rl.prompts_per_step=2", "rl.group_size=2", "data.micro_batch_size=2",
            "data.global_batch_size=3", "data.seq_length=5"]  # neither is a shape of GRPO's
    from cli_in_process import run_main  # `r1mega grpo ...` in this process (test_grpo.py starts the command)
    from r1mega.cli import main

    done = run_main(main, argv, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "steps=1" in done.stdout
