"""The built-in demo, run as a new user runs it: held-out accuracy clearly rises under GRPO."""
import os
import re
import sys

import pytest


def _demo_command(root):
    return [sys.executable, "-m", "r1mega.cli", "demo", "--out", str(root / "demo")], \
        {**os.environ, "OMP_NUM_THREADS": "1"}, None


@pytest.mark.slow
@pytest.mark.background_command(make=_demo_command)  # runs beside the other tests (tests/background_runs.py)
def test_demo_accuracy_rises(background_run):
    tmp_path = background_run.root
    proc = background_run.wait(timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"accuracy_before=(\S+) accuracy_after=(\S+)", last)
    before, after = float(m.group(1)), float(m.group(2))
    assert after >= before + 0.3, (before, after)
    assert (tmp_path / "demo" / "grpo" / "curves.png").stat().st_size > 10_000
    assert "logprob_gap_max=" in proc.stdout
