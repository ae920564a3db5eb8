"""Slow end-to-end commands started in the background when collection ends, one after another, so
they run on the second core while the rest of the suite runs on the first: the suite's tests run one
intra-op thread, and a command that takes minutes would otherwise add all its minutes to the suite's.

A test marked `@pytest.mark.background_command(make=...)` (make(root) -> (argv, env, cwd), root an empty
directory of its own) asks the `background_run` fixture for the finished process and its root; it
still runs exactly the command a user runs, and asserts on its exit status, output and files as
before. Only the start moves. Nothing starts for a test that is not selected (-k, -m, node ids) or
under --collect-only; what still runs at the end of the session is killed."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

_RUNS: dict[str, "Run"] = {}  # node id -> its run
_ORDER: list["Run"] = []


class Run:
    def __init__(self, nodeid: str, make: Callable):
        self.nodeid = nodeid
        self.root = Path(tempfile.mkdtemp(prefix="r1mega-background-"))
        self.argv, self.env, self.cwd = make(self.root)
        self.done = threading.Event()
        self.proc: Optional[subprocess.Popen] = None
        self.result: Optional[subprocess.CompletedProcess] = None
        self.cancelled = False

    def run(self) -> None:
        out, err = self.root / ".stdout", self.root / ".stderr"
        try:
            with open(out, "w") as o, open(err, "w") as e:
                if not self.cancelled:
                    from r1mega.recipe import _die_with_parent  # killed if the test session dies

                    self.proc = subprocess.Popen(self.argv, stdout=o, stderr=e, env=self.env, cwd=self.cwd,
                                                 preexec_fn=_die_with_parent)
                    if self.cancelled:  # the session ended while it started
                        self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode if self.proc else -1
            self.result = subprocess.CompletedProcess(self.argv, code, out.read_text(), err.read_text())
        finally:
            self.done.set()

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        if not self.done.wait(timeout):
            self.proc.kill()
            raise TimeoutError(f"{self.nodeid}: {' '.join(self.argv)} still running after {timeout} s")
        return self.result


def start_selected(session) -> None:
    """Start the background commands of the selected tests, in the tests' order, one at a time."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        mark = item.get_closest_marker("background_command")
        if mark is not None:
            run = Run(item.nodeid, mark.kwargs["make"])
            _RUNS[item.nodeid] = run
            _ORDER.append(run)
    if _ORDER:
        threading.Thread(target=lambda: [r.run() for r in _ORDER], name="background-runs", daemon=True).start()


def run_of(item) -> Run:
    if item.nodeid not in _RUNS:
        raise RuntimeError(f"{item.nodeid}: the background_run fixture needs @pytest.mark.background_command")
    return _RUNS[item.nodeid]


def stop_all() -> None:
    """Kill what still runs (a session stopped early) and remove the runs' directories."""
    for run in _ORDER:
        run.cancelled = True
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
    for run in _ORDER:
        run.done.wait(60)
        shutil.rmtree(run.root, ignore_errors=True)
    _RUNS.clear()
    _ORDER.clear()


def user_env(**extra: str) -> dict:
    """The test process's environment, one intra-op thread (as the suite's subprocesses run)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}
