"""The user-facing parity check, run the way users run it."""
import os
import re
import subprocess
import sys

import pytest

from r1mega import cli
from tiny_hf import add_mtp_layer, make_hf_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_v3"))
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(path)
    add_mtp_layer(path)
    return path


def test_one_process_passes_and_reports(tiny_ckpt, capsys):
    assert cli.main(["verify-hf", "--hf-dir", tiny_ckpt]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(re.fullmatch(r"max_abs_logit_diff=(\S+)", last).group(1)) < 1e-4


def test_exceeding_tolerance_exits_nonzero(tiny_ckpt, capsys):
    # bfloat16 weights differ from the float32 reference far beyond 1e-6
    assert cli.main(["verify-hf", "--hf-dir", tiny_ckpt, "--dtype", "bfloat16", "--tol", "1e-6"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bfloat16_passes_at_its_own_default_tolerance(tiny_ckpt, capsys):
    # both sides in bf16: a correct model differs by bf16 rounding, far above float32's 1e-4
    assert cli.main(["verify-hf", "--hf-dir", tiny_ckpt, "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "PASS: tolerance 0.05" in out
    assert 1e-4 < float(re.search(r"max_abs_logit_diff=(\S+)", out).group(1)) < 5e-2


@pytest.mark.slow
def test_torchrun_tp2_pp2_ep2(tiny_ckpt):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8",
           "-m", "r1mega.cli", "verify-hf", "--hf-dir", tiny_ckpt, "--tp", "2", "--pp", "2", "--ep", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert "tp=2 pp=2 ep=2 etp=2 dp=2" in proc.stdout
    assert float(re.fullmatch(r"max_abs_logit_diff=(\S+)", lines[-1]).group(1)) < 1e-4


@pytest.mark.slow
def test_torchrun_cp2_with_tp2_pp2_ep2(tiny_ckpt):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8",
           "-m", "r1mega.cli", "verify-hf", "--hf-dir", tiny_ckpt, "--cp", "2", "--tp", "2", "--pp", "2",
           "--ep", "2", "--sp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert "tp=2 pp=2 ep=2 etp=2 dp=1 cp=2" in proc.stdout
    assert float(re.fullmatch(r"max_abs_logit_diff=(\S+)", lines[-1]).group(1)) < 1e-4
