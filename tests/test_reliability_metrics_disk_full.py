"""A full disk (here a file-size limit) while a run appends to metrics.jsonl or rollouts.jsonl, or
trims them on a resume, must stop it with an error naming the file (the checkpoints are whole; a
rerun resumes), not a traceback, and leave no temporary file."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITED = """
import resource, sys
from r1mega.errors import OutputError
from r1mega.train.metrics_log import MetricsLog, append_rollouts
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
what, run_dir = sys.argv[1], sys.argv[2]
try:
    if what == "log":
        log = MetricsLog(run_dir, 100, 0, True)
        for step in range(1, 101):
            log.log(step, {"loss": 1.0 / step, "note": "x" * 50})
    else:  # a resume trimming a log past the limit
        MetricsLog(run_dir, 100, 58, True)  # drops step 59 only
except OutputError as e:
    print("refused:", e)
"""


def limited(what, run_dir):
    return subprocess.run([sys.executable, "-c", LIMITED, what, str(run_dir)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_appending_past_the_limit_is_named(tmp_path):
    r = limited("log", tmp_path)
    assert r.returncode == 0 and f"refused: {tmp_path / 'metrics.jsonl'}: cannot write" in r.stdout, r.stderr[-800:]


def test_trimming_on_a_resume_past_the_limit_is_named_and_leaves_no_temporary(tmp_path):
    lines = "".join(f'{{"step": {s}, "loss": 1.0, "pad": "{"y" * 60}"}}\n' for s in range(1, 60))
    (tmp_path / "metrics.jsonl").write_text(lines)  # larger than the limit: the trimmed copy cannot be written
    r = limited("trim", tmp_path)
    assert r.returncode == 0 and f"refused: {tmp_path / 'metrics.jsonl'}: cannot write" in r.stdout, r.stderr[-800:]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"] and (tmp_path / "metrics.jsonl").read_text() == lines
