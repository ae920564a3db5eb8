"""Probe: a trainer killed before its atexit (SIGKILL, OOM, preemption) left each zygote's memory
cgroup behind (`r1mega-zygote-<pid>`; 47 on this machine, each also keeping its parent from
being removed), and a later zygote that got one of those pids back could not create its own
(mkdir: exists) and silently ran without the memory cap. A zygote now removes the stale ones
(empty, their pid gone or its own) before joining."""
import os

import pytest

from r1mega.sandbox import isolation
from r1mega.sandbox.isolation import Job, Limits, isolation_problem
from r1mega.sandbox.sandbox_init import find_memory_cgroup

FOUND = find_memory_cgroup() if os.geteuid() == 0 else None
pytestmark = [pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}"),
              pytest.mark.skipif(FOUND is None, reason="no memory cgroup to make here")]


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_new_zygote_removes_the_cgroups_of_dead_ones_and_keeps_live_ones():
    parent = FOUND[0]
    dead, live = f"{parent}/r1mega-zygote-{_dead_pid()}", f"{parent}/r1mega-zygote-{os.getpid()}"
    os.mkdir(dead)
    os.mkdir(live)  # named by a live pid (this test's): never taken for stale
    z = isolation._Zygote()
    try:
        res = isolation._run(Job("print(6 * 7)", limits=Limits(wall_seconds=10)), True, zygote=z)
        assert res.ok and res.stdout == "42\n", res
        assert os.path.isdir(f"{parent}/r1mega-zygote-{z.proc.pid}")  # its own
        assert not os.path.exists(dead)
        assert os.path.isdir(live)
    finally:
        z.sock.close()
        z.proc.wait(timeout=10)
        for d in (dead, live, f"{parent}/r1mega-zygote-{z.proc.pid}"):
            if os.path.isdir(d):
                os.rmdir(d)


def test_a_zygote_whose_pid_names_a_stale_cgroup_still_joins_one():
    """What a zygote meets when its pid names a dead zygote's cgroup: it must still join a memory
    cgroup of its own (else its programs run without the cap). Run in a forked child, whose pid
    is known before it joins."""
    from r1mega.sandbox import sandbox_init as si

    parent = FOUND[0]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.mkdir(f"{parent}/r1mega-zygote-{os.getpid()}")  # the dead zygote's, same pid
            si.MEMORY_CGROUP = FOUND
            path, dfd, _ = si.join_memory_cgroup()
            os.close(dfd)
            code = 0
        finally:
            try:
                with open(f"{parent}/cgroup.procs", "w") as f:  # back out, so the cgroup can go
                    f.write(str(os.getpid()))
            except OSError:
                pass
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    leftover = f"{parent}/r1mega-zygote-{pid}"
    if os.path.isdir(leftover):
        os.rmdir(leftover)
    assert os.waitstatus_to_exitcode(status) == 0
