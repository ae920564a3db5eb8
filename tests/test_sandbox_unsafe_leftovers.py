"""Probe of the degraded mode (rl.unsafe_code_sandbox=true, no namespaces): its supervisor killed
only the program's process group, so a grandchild started with setsid() outlived the run (a daemon
of the sandbox's uid, free to act later), and one holding stdout kept the trainer waiting until its
deadline (wall + 17 s) and turned a finished program into a timeout. The supervisor is now the
program's child subreaper and kills what is left (as root, every process of the sandbox's own
uid at once), then reaps it."""
import os
import signal
import time

import pytest

from r1mega.sandbox.isolation import Job, Limits, _run

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only")

DAEMON = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        {daemon}
        time.sleep(60)
        os._exit(0)
    os.write(w, str(pid).encode())
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), os.getuid())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _daemons(res) -> list[int]:
    return [int(res.stdout.split()[0])] if res.stdout.split() else []


def _uid_processes(uid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and _alive(int(name)):
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("daemon", ["os.closerange(0, 3)", "pass"], ids=["detached", "holding stdout"])
def test_no_process_outlives_an_unsafe_run(daemon):
    t0 = time.monotonic()
    res = _run(Job(DAEMON.format(daemon=daemon), limits=Limits(wall_seconds=2)), isolate=False)
    took = time.monotonic() - t0
    pids = _daemons(res)
    try:
        assert res.ok and res.reason == "ok" and len(pids) == 1, res
        assert not _alive(pids[0]), "the setsid() grandchild outlived the run"
        assert took < 4.0, f"the run took {took:.1f} s"
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


HOPPER = """
import os, time
if os.fork() == 0:
    os.setsid()
    while True:  # a new pid every step: never the same process to kill
        try:
            if os.fork():
                os._exit(0)
        except OSError:  # the task limit, until the zombies left behind are reaped
            time.sleep(0.001)
time.sleep(0.3)
print(os.getuid())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox has a uid of its own only when the trainer is root")
def test_a_process_that_keeps_changing_pid_is_ended_too():
    res = _run(Job(HOPPER, limits=Limits(wall_seconds=3)), isolate=False)
    uid = int(res.stdout) if res.stdout.strip().isdigit() else None
    assert uid is not None and uid >= 1_800_000_000, res
    deadline = time.monotonic() + 2.0  # the supervisor, of that uid too, may still be exiting
    while _uid_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = _uid_processes(uid)
    for _ in range(2000):  # clean up after a failure (the hopper changes pid as it goes)
        pids = _uid_processes(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert res.ok and left == [], res


HOP = ("import os, time\nwhile True:\n    try:\n        if os.fork():\n            os._exit(0)\n"
       "    except OSError:\n        time.sleep(0.001)\n")


def test_without_a_uid_of_its_own_the_children_are_ended_one_by_one():
    """A trainer that is not root shares its uid with the program: kill(-1) is not an option, so
    the subreaper kills its children until none is left (a pid-hopping one included)."""
    import subprocess
    import sys

    from r1mega.sandbox import sandbox_init as si

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            si.libc.prctl(si.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            for _ in range(2):
                subprocess.Popen([sys.executable, "-I", "-S", "-c", HOP], start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                os._exit(0)
            time.sleep(0.5)  # the hoppers are under way
            si.end_leftovers(False)
            try:
                os.waitpid(-1, os.WNOHANG)
                code = 2  # a child is left
            except ChildProcessError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
