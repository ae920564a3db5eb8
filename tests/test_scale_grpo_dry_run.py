"""Scale probe: `r1mega grpo --dry-run` planned a pretraining step of data.seq_length tokens (16 by
default) and data.global_batch_size sequences, keys GRPO never reads, and no rollout: for DeepSeek-R1's
R1-Zero stage on the 671B model (32K-token responses, 64K from step 8,200; 512 sequences per step,
8,192 per rollout) it printed "fits" whatever the response length. Now it plans what a GRPO step runs
(rows as long as the longest response its steps allow, prompts_per_step x group_size sequences) and
the rollout's KV cache, capped by rl.rollout_cache_tokens, and refuses a rollout that does not fit."""
import os
import re

import pytest

from r1mega.cli import main
from r1mega.config import load_config
from r1mega.plan import GiB, plan_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["--config", os.path.join(ROOT, "configs/model/deepseek_v3_671b.yaml"),
           "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml")]
# the README's layout for R1's GRPO step on 1,024 GPUs
LAYOUT = ["parallel.tp=8", "parallel.sp=true", "parallel.cp=4", "parallel.pp=16", "parallel.ep=64",
          "parallel.etp=1", "train.recompute=selective", "data.micro_batch_size=1", "data.seq_length=64"]
LATENT_BYTES_PER_TOKEN = 4 * (512 + 64) * 2  # the largest stage's 4 layers, bf16


def dry_run(capsys, *overrides):
    rc = main(["grpo", *CONFIGS, "--dry-run", "--world", "1024", *LAYOUT, *overrides])
    out = capsys.readouterr().out
    gib = lambda name: float(re.search(rf"^  {name}\s+([\d.]+) GiB", out, re.M).group(1))  # noqa: E731
    kv = re.search(r"mla_latent ([\d.]+) GiB", out)
    return rc, out, gib("activations"), gib("total"), float(kv.group(1)) if kv else None


def test_grpo_dry_run_plans_the_grpo_step_and_its_rollout(capsys):
    cfg = load_config([CONFIGS[1], CONFIGS[3]], LAYOUT)
    want = plan_for(cfg, 1024, 1, 32768, 512)  # the README's `r1mega plan ... --seq-length 32768 --global-batch 512`
    rc, out, acts, total, kv = dry_run(capsys, "train.steps=8000", "rl.rollout_cache_tokens=2000000")
    assert rc == 0, out
    assert "rows of 32768 tokens" in out and "a rollout of 8192 sequences" in out
    assert acts == pytest.approx(want.memory["activations"] / GiB, abs=0.006)
    assert total == pytest.approx(want.total_memory / GiB, abs=0.006)
    assert kv == pytest.approx(2_000_000 * LATENT_BYTES_PER_TOKEN / GiB, abs=0.006)  # the cache budget per rank


def test_grpo_dry_run_follows_the_response_schedule_and_refuses_a_rollout_that_does_not_fit(capsys):
    rc, out, acts_64k, _, kv = dry_run(capsys, "train.steps=10400", "rl.rollout_cache_tokens=2000000")
    assert "rows of 65536 tokens" in out  # max_new_tokens_schedule [[8200, 65536]] reached before 10,400 steps
    _, _, acts_32k, _, _ = dry_run(capsys, "train.steps=8000", "rl.rollout_cache_tokens=2000000")
    assert acts_64k > 1.9 * acts_32k
    rc, out, _, _, kv = dry_run(capsys, "train.steps=8000")
    # no cache budget: each GPU caches its 8192 / (dp 2 x cp 4) rows of 32768 tokens
    assert kv == pytest.approx(8192 * 32768 / 8 * LATENT_BYTES_PER_TOKEN / GiB, abs=0.006)
    assert rc == 1 and "the rollout does not fit" in out and "rl.rollout_cache_tokens" in out
