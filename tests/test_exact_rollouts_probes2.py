"""Hostile probes of rl.exact_rollouts (second round): shapes and thread counts the first probes did not
reach. Each asserts bits, not tolerances: the sampler's log-prob of a token is the trainer's."""
import json
import os

import pytest
import torch

from r1mega.inference.sampling import log_softmax_at
from r1mega.kernels import batch_invariant
from r1mega.parallel.layout import single_process_state
from r1mega.rl.policy_scores import scores


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_lone_decoding_row_logprob_is_the_trainers_under_two_threads(two_threads):
    """A decoding step with one row left (the last sequence of a rollout) over a vocabulary past torch's
    reduction grain (32,768): torch splits that lone row's sum over the threads, and the trainer's rows
    are summed whole. Before the fix 3 of 32 tokens differed by 9.5e-7."""
    torch.manual_seed(0)
    s, b, V = 8, 4, 65536
    logits = torch.randn(s, b, V)
    targets = torch.randint(0, V, (s, b))
    ps = single_process_state()
    with batch_invariant.exact_mode():
        trainer, _ = scores(logits, targets, ps)
        sampler = torch.stack([log_softmax_at(logits[i, j][None], targets[i, j][None], 0, None)[0]
                               for i in range(s) for j in range(b)]).view(s, b)
    assert torch.equal(trainer, sampler), (trainer - sampler).abs().max()


def _grpo_run(tmp_path, overrides, threads):
    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = load_config("configs/tiny/r1_zero_demo.yaml", [
            "train.steps=2", f"train.run_dir={tmp_path}", "rl.exact_rollouts=true", "rl.group_size=4",
            "rl.prompts_per_step=2", "rl.log_rollouts=0", "train.log_interval=1", "model.num_mtp_layers=0",
            *overrides])
        grpo(cfg, eval_problems=0)
    finally:
        torch.set_num_threads(before)
    return [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]


@pytest.mark.slow
def test_grpo_one_row_decoding_big_vocab_two_threads_gap_zero(tmp_path):
    """End to end: two intra-op threads set before the run, vocabulary 65,536, one row decoding at a time
    (rl.rollout_max_rows=1). Before the fix: logprob_gap_max 9.5e-7 on both steps."""
    rows = _grpo_run(tmp_path, ["model.vocab_size=65536", "rl.max_new_tokens=16", "rl.rollout_max_rows=1"], 2)
    assert len(rows) == 2
    for r in rows:
        assert r["logprob_gap_max"] == 0.0 and r["sampler_kl"] == 0.0 and r["clip_frac"] == 0.0, r


@pytest.mark.slow
def test_grpo_tp2_two_threads_lone_row_vocab_shard_gap_zero(tmp_path):
    """TP2 under torchrun, each rank at two intra-op threads, a vocabulary shard of 65,536 (DeepSeek's
    129,280 over TP2 is as long), one row decoding at a time. Before the fix: logprob_gap_max 9.5e-7."""
    import socket
    import subprocess
    import sys
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "r1mega.cli", "grpo", "--config", "configs/tiny/r1_zero_demo.yaml", "train.steps=2",
           f"train.run_dir={run_dir}", "rl.exact_rollouts=true", "rl.log_rollouts=0", "train.log_interval=1",
           "model.num_mtp_layers=0", "parallel.tp=2", "model.vocab_size=131072", "rl.max_new_tokens=16",
           "rl.rollout_max_rows=1", "rl.group_size=4", "rl.prompts_per_step=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert len(rows) == 2
    for r in rows:
        assert r["logprob_gap_max"] == 0.0 and r["sampler_kl"] == 0.0 and r["clip_frac"] == 0.0, r
