"""A full disk (here a file-size limit) while a command takes its output directory: the lock and
the ownership marker are tiny writes, but a failed one was a traceback that left an empty lock (a
rerun within seconds was refused as 'in use') or an empty marker (the directory refused for good
as 'not written by r1mega'). It must be a named error that leaves nothing behind."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITED = """
import resource, sys
from r1mega import output_dir
from r1mega.errors import OutputError
resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    getattr(output_dir, sys.argv[1])(sys.argv[2], "generate")
except OutputError as e:
    print("refused:", e)
"""


def output_dir_lock(out):
    return os.path.join(str(out), ".r1mega.lock")


def limited(what, path):
    return subprocess.run([sys.executable, "-c", LIMITED, what, str(path)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_a_lock_that_cannot_be_written_is_named_and_not_left(tmp_path):
    out = tmp_path / "out"
    r = limited("own_and_lock", out)
    assert r.returncode == 0 and "refused:" in r.stdout and output_dir_lock(out) in r.stdout, r.stdout + r.stderr
    assert sorted(os.listdir(out)) == []
    from r1mega import output_dir

    output_dir.own_and_lock(str(out), "generate").release()  # at once: no empty lock to wait out


def test_a_marker_that_cannot_be_written_is_named_and_not_left(tmp_path):
    out = tmp_path / "out"
    r = limited("claim", out)
    assert r.returncode == 0 and "refused:" in r.stdout and ".r1mega-owner.json" in r.stdout, r.stdout + r.stderr
    assert sorted(os.listdir(out)) == []
    from r1mega import output_dir

    assert output_dir.claim(str(out), "generate")["command"] == "generate"
