"""Probe: kernel buffers that no rlimit counts. A program raised its sockets' send buffers to twice
the host's net.core.wmem_max (4 MiB here: 8 MiB each) and filled them: one process queued 470 MiB
in 30 socket pairs, whatever its address-space cap. With a memory cgroup that is charged to the
program; without one (an unprivileged trainer: 4 processes of 512 MiB is the promise) four
processes held ~1.9 GiB more. Pipes grown with F_SETPIPE_SZ (1 MiB each) likewise. Now the
seccomp filter ignores SO_SNDBUF/SO_RCVBUF (the call succeeds, the default size stays) and
refuses F_SETPIPE_SZ, so a socket holds at most the host's default and a pipe 64 KiB."""
import pytest

from r1mega.sandbox.isolation import Limits, isolation_problem, run_code

pytestmark = pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}")

PAIRS = 20


def _wmem_default() -> int:
    with open("/proc/sys/net/core/wmem_default") as f:
        return int(f.read())


SOCKETS = f"""
import socket
held, pairs = 0, []
for _ in range({PAIRS}):
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30)
        s.setblocking(False)
        try:
            while True:
                held += s.send(b"x" * 65536)
        except BlockingIOError:
            pass
    pairs.append((a, b))
print(held)
"""


def test_sockets_hold_no_more_than_the_default_send_buffer():
    res = run_code(SOCKETS, limits=Limits(wall_seconds=20, cpu_seconds=10))
    assert res.ok, res.reason + res.stderr[-500:]
    held = int(res.stdout)
    # a socket may pass its send buffer by one message (up to half of it) before it blocks
    assert 0 < held <= 2 * PAIRS * 2 * _wmem_default(), f"{held >> 20} MiB queued in {2 * PAIRS} sockets"


PIPES = f"""
import fcntl, os
held, pipes = 0, []
for _ in range({PAIRS}):
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass
    os.set_blocking(w, False)
    try:
        while True:
            held += os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    pipes.append((r, w))
print(held)
"""


def test_pipes_hold_no_more_than_their_default_size():
    res = run_code(PIPES, limits=Limits(wall_seconds=20, cpu_seconds=10))
    assert res.ok, res.reason + res.stderr[-500:]
    assert int(res.stdout) <= PAIRS * 65536, f"{int(res.stdout) >> 20} MiB held in {PAIRS} pipes"


BACKLOG = """
import socket
srv = socket.socket(socket.AF_UNIX)
srv.bind("/tmp/listener")
srv.listen(100000)
held = 0
for _ in range(400):
    c = socket.socket(socket.AF_UNIX)
    c.setblocking(False)
    try:
        c.connect("/tmp/listener")
    except BlockingIOError:  # the backlog is full
        c.close()
        break
    try:
        while True:
            held += c.send(b"x" * 65536)
    except BlockingIOError:
        pass
    c.close()  # its data stays queued on the connection the listener has not accepted
print(held)
"""


def test_closed_connections_do_not_pile_up_behind_a_listener():
    """Each connection a listener has not accepted keeps what its client sent after the client
    closed it: 400 of them held 88 MiB with one fd open (the host's somaxconn, 4096 a listener,
    was the only bound). The sandbox's network namespace now allows a backlog of 4."""
    res = run_code(BACKLOG, limits=Limits(wall_seconds=20, cpu_seconds=10))
    assert res.ok, res.reason + res.stderr[-500:]
    held = int(res.stdout)
    assert 0 < held <= 5 * 2 * _wmem_default(), f"{held >> 20} MiB held behind one listener"


DATAGRAMS = """
import socket
rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
rx.bind("/tmp/rx")
held = 0
for _ in range(100):
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setblocking(False)
    try:
        held += tx.sendto(b"x" * 150000, "/tmp/rx")
    except BlockingIOError:  # the receiver's queue is full
        tx.close()
        break
    tx.close()  # the datagram stays queued at the receiver
print(held)
"""


def test_datagrams_queue_no_deeper_than_the_sandbox_allows():
    res = run_code(DATAGRAMS, limits=Limits(wall_seconds=20, cpu_seconds=10))
    assert res.ok, res.reason + res.stderr[-500:]
    assert 0 < int(res.stdout) <= 5 * 150000, f"{int(res.stdout) >> 10} KiB queued at one receiver"


READ_ONLY_PROC_SYS = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x20000) == 0  # a mount namespace of this process's own, as Docker has
assert libc.mount(None, b"/", None, ctypes.c_ulong((1 << 14) | (1 << 18)), None) == 0
assert libc.mount(b"/proc/sys", b"/proc/sys", None, ctypes.c_ulong(4096 | (1 << 14)), None) == 0
assert libc.mount(None, b"/proc/sys", None, ctypes.c_ulong(32 | 4096 | 1), None) == 0  # read-only
from r1mega.sandbox.isolation import isolation_problem, run_code
print(isolation_problem(), run_code("print(6 * 7)").stdout.strip())
"""


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root to make a mount namespace")
def test_the_sandbox_still_starts_where_proc_sys_is_read_only():
    """Docker mounts /proc/sys read-only: the queue depths cannot be set there, and the sandbox
    must run all the same (the memory cgroup, where there is one, counts those queues)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", READ_ONLY_PROC_SYS], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.split() == ["None", "42"], out.stdout + out.stderr[-1000:]
