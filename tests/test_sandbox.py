"""The code-reward sandbox against programs that know they are sandboxed.

Every attack runs against canary files outside the sandbox that must stay byte-for-byte identical
(content, mtime, mode, owner), marker paths that must not appear, a listening TCP socket and an
abstract unix socket that must get no connection, a host process that must survive, and secrets
(environment, files, inherited fds) that must not show up in anything the program printed. After
each attack the next program must still run. Correct programs (real solved problems) must pass.
"""
from __future__ import annotations

import ast
import glob
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from r1mega.sandbox import isolation as sandbox
from r1mega.rl.rewards import code_reward, code_rewards_in_parallel
from r1mega.sandbox.isolation import Job, Limits, run_code, run_many, run_tests

pytestmark = pytest.mark.skipif(sandbox.isolation_problem() is not None,
                                reason=f"isolated sandbox unavailable here: {sandbox.isolation_problem()}")

FAST = Limits(wall_seconds=3, cpu_seconds=2, memory_bytes=256 * 2 ** 20)
SHORT = Limits(wall_seconds=2, cpu_seconds=2, memory_bytes=256 * 2 ** 20)
SECRET = "r1mega-secret-7f3a9c"


def _snapshot(root: str) -> dict:
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = open(p, "rb").read() if os.path.isfile(p) and not os.path.islink(p) else None
            snap[p] = (data, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_ino)
    return snap


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The world outside: canaries, a checkpoint-like secret, sockets, a victim process, env secret."""
    root = str(tmp_path_factory.mktemp("canaries"))
    os.chmod(root, 0o755)  # traversable by nobody: only the sandbox's walls may stop it
    for name, mode in (("canary.txt", 0o666), ("model.ckpt", 0o600), ("script.sh", 0o777)):
        with open(os.path.join(root, name), "w") as f:
            f.write(f"{name}: {SECRET}\n")
        os.chmod(os.path.join(root, name), mode)
    os.mkdir(os.path.join(root, "sub"), 0o777)
    os.chmod(os.path.join(root, "sub"), 0o777)
    with open(os.path.join(root, "sub", "inner.txt"), "w") as f:
        f.write("inner\n")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0r1mega-sandbox-test-" + SECRET)
    abstract.listen(8)
    abstract.setblocking(False)
    victim = subprocess.Popen(["sleep", "600"], user=65534, group=65534, extra_groups=[])  # same uid as the sandbox
    os.environ["R1MEGA_TEST_SECRET"] = SECRET
    leaked = os.open(os.path.join(root, "model.ckpt"), os.O_RDONLY)
    os.set_inheritable(leaked, True)  # an fd the trainer forgot to mark close-on-exec
    env = dict(root=root, port=tcp.getsockname()[1], victim=victim.pid, ppid=os.getpid(),
               ckpt=os.path.join(root, "model.ckpt"), canary=os.path.join(root, "canary.txt"))
    yield env | {"tcp": tcp, "abstract": abstract, "victim_proc": victim, "snapshot": _snapshot(root)}
    os.close(leaked)
    del os.environ["R1MEGA_TEST_SECRET"]
    victim.kill()
    victim.wait()
    tcp.close()
    abstract.close()


MARKERS = ["/tmp/r1mega-escape-marker", "/tmp/r1mega-escape-marker2", "/r1mega-escape-marker"]

# Each attack is the program an RL policy could write. {root} {canary} {ckpt} {port} {victim} {ppid}
# are filled in from the host fixture: the attacker is assumed to know every path and pid.
ATTACKS = {
    "audit_hook_disabling": """
import os, sys
os._exit = lambda c: None
m = sys.modules['__main__']; m.refuse = lambda *a: None; m.root = '/'
os.path.realpath = lambda p: '/tmp/x'
open('{canary}', 'w').write('pwned')
""",
    "posixsubprocess_fork_exec": """
import _posixsubprocess, os
for exe in ('/bin/sh', '/usr/bin/sh', '/usr/bin/python3', __import__('sys').executable):
    try:
        r, w = os.pipe()
        pid = _posixsubprocess.fork_exec([exe, '-c', 'echo pwned > {canary}; touch /tmp/r1mega-escape-marker'],
            [exe.encode()], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None,
            -1, None, False)
        print('fork_exec', exe, pid, os.waitpid(pid, 0))
    except Exception as e: print('fork_exec', exe, e)
pid = os.fork()
if pid == 0:
    try: open('{canary}', 'w').write('pwned from fork')
    finally: os._exit(0)
os.waitpid(pid, 0)
""",
    "multiprocessing_spawn_and_fork": """
import multiprocessing as mp
def w(p): open(p, 'w').write('pwned')
if __name__ == '__main__':
    for ctx in ('spawn', 'fork', 'forkserver'):
        try:
            p = mp.get_context(ctx).Process(target=w, args=('{canary}',)); p.start(); p.join(5)
        except Exception as e: print(ctx, e)
""",
    "truncate_utime_chown_chmod": """
import os
for f in (lambda: os.truncate('{canary}', 0), lambda: os.utime('{canary}', (0, 0)),
          lambda: os.chown('{canary}', 65534, 65534), lambda: os.chmod('{canary}', 0),
          lambda: os.chmod('{root}', 0o777), lambda: os.setxattr('{canary}', 'user.x', b'1'),
          lambda: os.utime('{root}/sub', (0, 0)), lambda: os.lchown('{root}/sub', 0, 0)):
    try: f()
    except Exception as e: print(e)
""",
    "rename_replace_move_onto_outside": """
import os, shutil
open('/tmp/evil', 'w').write('pwned')
for f in (lambda: os.rename('/tmp/evil', '{canary}'), lambda: os.replace('/tmp/evil', '{canary}'),
          lambda: shutil.move('/tmp/evil', '{canary}'), lambda: os.rename('{canary}', '/tmp/stolen'),
          lambda: os.replace('{root}/sub', '{root}/moved'), lambda: shutil.copy('/tmp/evil', '{canary}')):
    try: f()
    except Exception as e: print(e)
""",
    "dir_fd_tricks": """
import os
for d in ('{root}', '/', '/tmp'):
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        for f in (lambda: os.open('canary.txt', os.O_WRONLY | os.O_TRUNC, dir_fd=fd),
                  lambda: os.open('r1mega-escape-marker', os.O_CREAT | os.O_WRONLY, dir_fd=fd),
                  lambda: os.unlink('canary.txt', dir_fd=fd), lambda: os.mkdir('r1mega-escape-marker', dir_fd=fd)):
            try: f()
            except Exception as e: print(e)
    except Exception as e: print(d, e)
""",
    "fileio_pathlib": """
import io, pathlib
for p in ('{canary}', '{ckpt}', '/tmp/../{root}/canary.txt'):
    try: io.FileIO(pathlib.Path(p), 'w').write(b'pwned')
    except Exception as e: print(e)
try: pathlib.Path('{root}/r1mega-escape-marker').write_text('x')
except Exception as e: print(e)
""",
    "symlinks_hardlinks_outside": """
import os
for f in (lambda: os.symlink('/tmp', '{root}/r1mega-escape-marker'), lambda: os.link('{canary}', '/tmp/hl'),
          lambda: os.symlink('{canary}', '/tmp/sl'), lambda: os.link('/tmp/sl', '{root}/r1mega-escape-marker')):
    try: f()
    except Exception as e: print(e)
try: open('/tmp/sl', 'w').write('pwned via symlink')
except Exception as e: print(e)
""",
    "mkfifo_mknod_outside": """
import os, stat
for f in (lambda: os.mkfifo('{root}/r1mega-escape-marker'), lambda: os.mknod('{root}/r1mega-escape-marker2'),
          lambda: os.mknod('/tmp/sda', stat.S_IFBLK | 0o600, os.makedev(8, 0)),
          lambda: os.mknod('/tmp/mem', stat.S_IFCHR | 0o600, os.makedev(1, 1))):
    try: f()
    except Exception as e: print(e)
print(os.listdir('/tmp'))
""",
    "rmtree_outside": """
import shutil
for p in ('{root}', '{root}/sub', '/usr/lib', '/dev'):
    shutil.rmtree(p, ignore_errors=True)
""",
    "setns_host_netns_then_loopback": """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
for p in ('/proc/{ppid}/ns/net', '/proc/1/ns/net', '/proc/self/ns/net'):
    try:
        fd = os.open(p, os.O_RDONLY); print('setns', libc.setns(fd, 0x40000000), ctypes.get_errno())
    except Exception as e: print(p, e)
print('unshare', libc.unshare(0x10000000 | 0x40000000), ctypes.get_errno())
for fam, addr in ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_INET6, ('::1', {port}))):
    try: socket.create_connection(addr, timeout=1).send(b'pwned')
    except Exception as e: print(e)
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect('\\0r1mega-sandbox-test-' + 'r1mega-secret-7f3a9c'); print('abstract ok')
except Exception as e: print(e)
for fam in (socket.AF_NETLINK, socket.AF_PACKET):
    try: socket.socket(fam, socket.SOCK_RAW); print('raw socket', fam)
    except Exception as e: print(e)
""",
    "setsid_grandchild_outlives_timeout": """
import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, b'r1m-leftover', 0, 0, 0)  # PR_SET_NAME: findable if it survives
        time.sleep(4)
        for p in ('{canary}', '/tmp/r1mega-escape-marker'):
            try: open(p, 'w').write('late')
            except Exception: pass
        os._exit(0)
    os._exit(0)
time.sleep(60)
""",
    "grandchild_holds_stdout_open": """
import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    ctypes.CDLL(None).prctl(15, b'r1m-leftover', 0, 0, 0)
    time.sleep(60)
    os._exit(0)
print('parent leaves')
""",
    "read_secrets": """
import os, glob
for p in ('/etc/passwd', '/etc/shadow', '{ckpt}', '{canary}', '/proc/{ppid}/environ', '/proc/self/environ',
          '/proc/1/environ', '/root/.bashrc', '/proc/{ppid}/cmdline', '/sys/class/net/lo/address'):
    try: print(open(p).read())
    except Exception as e: print(type(e).__name__)
print(dict(os.environ))
print(glob.glob('/*'), glob.glob('/work/*'), glob.glob('{root}/*'))
site = os.path.join(os.path.dirname(os.__file__), 'site-packages')
print('site-packages', os.listdir(site) if os.path.isdir(site) else [])
for fd in range(3, 256):
    try: print(fd, os.read(fd, 4096))
    except OSError: pass
""",
    "huge_stdout": """
import sys
chunk = 'x' * (1 << 20)
for _ in range(384):
    sys.stdout.write(chunk)
""",
    "fill_the_disk": """
import os
n = 0
try:
    open('/tmp/big', 'wb').write(b'x' * (200 << 20))
except OSError as e: print('one file', e)
try:
    for i in range(100):  # 200 MB as 2 MB files
        with open(f'/tmp/big{{i}}', 'wb') as f:
            f.write(b'x' * (2 << 20)); f.flush(); n += 2 << 20
except OSError as e: print('stopped', e)
for i in range(100000):  # inodes as well
    try: open(f'/tmp/f{{i}}', 'w').close()
    except OSError as e: print('inodes', i, e); break
print('wrote', n)
""",
    "ptrace_and_process_memory": """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for pid in ({ppid}, {victim}, 1):
    print('attach', pid, libc.ptrace(16, pid, 0, 0), ctypes.get_errno())
print('traceme', libc.ptrace(0, 0, 0, 0), ctypes.get_errno())
iov = (ctypes.c_char * 64)()
print('vm_readv', libc.process_vm_readv({ppid}, 0, 0, 0, 0, 0), ctypes.get_errno())
for p in ('/proc/{ppid}/mem', '/proc/{victim}/mem'):
    try: open(p, 'rb')
    except Exception as e: print(e)
""",
    "dev_access": """
import os
print(os.listdir('/dev'))
for p in ('/dev/mem', '/dev/kmem', '/dev/vda', '/dev/sda', '/dev/nvidia0', '/dev/kmsg', '/dev/tty', '/dev/shm'):
    try: open(p, 'rb'); print('opened', p)
    except Exception as e: print(e)
open('/dev/null', 'w').write('fine')
try: open('/dev/urandom', 'w').write('x')
except Exception as e: print(e)
""",
    "signals_to_parent_and_host": """
import os, signal
for pid in ({ppid}, {victim}, -1):
    try: os.kill(pid, signal.SIGKILL); print('sent', pid)
    except Exception as e: print(pid, e)
try: os.killpg({victim}, signal.SIGKILL)
except Exception as e: print(e)
""",
    "huge_argv_and_exec": """
import os
for exe in ('/bin/sh', '/usr/bin/env', __import__('sys').executable):
    try: os.execv(exe, [exe] + ['A' * 100000] * 1000)
    except Exception as e: print(exe, e)
""",
    "namespaces_mount_chroot_bpf": """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print('mount', libc.mount(b'/', b'/tmp', None, 4096, None), ctypes.get_errno())
print('chroot', libc.chroot(b'/tmp'), ctypes.get_errno())
print('userns', libc.unshare(0x10000000), ctypes.get_errno())
print('bpf', libc.syscall(321, 0, 0, 0), ctypes.get_errno())
print('io_uring', libc.syscall(425, 1, 0), ctypes.get_errno())
print('pdeathsig', libc.prctl(1, 0, 0, 0, 0), ctypes.get_errno())
print('keyctl', libc.syscall(250, 0, 0), ctypes.get_errno())
print('setuid0', libc.setuid(0), ctypes.get_errno())
open('/r1mega-escape-marker', 'w')
""",
    "scheduler_hostname_clone_parent": """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
for f in (lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50)),
          lambda: os.setpriority(os.PRIO_PROCESS, 0, -20)):
    try: f(); print('raised priority')
    except Exception as e: print(e)
print('host', socket.gethostname())
r = libc.syscall(56 if os.uname().machine == 'x86_64' else 220, 0x8000 | 17, 0, 0, 0, 0)  # CLONE_PARENT
if r == 0: os._exit(0)
print('clone_parent', r, ctypes.get_errno())
""",
    "setuid_binary_and_memfd_exec": """
import os, shutil
print(os.listdir('/'), os.listdir('/usr'))
open('/tmp/x', 'wb').write(open('/dev/zero', 'rb').read(64)); os.chmod('/tmp/x', 0o4755)
try: os.execv('/tmp/x', ['x'])
except Exception as e: print('exec tmp', e)
fd = os.memfd_create('x'); os.write(fd, b'#!/bin/sh' + bytes([10]) + b'touch /tmp/r1mega-escape-marker')
try: os.execve(fd, ['x'], {{}})
except Exception as e: print('exec memfd', e)
""",
    "fork_bomb": """
import os
while True:
    try: os.fork()
    except OSError: pass
""",
    "memory_bomb": """
x = []
while True:
    x.append(bytearray(10 ** 8))
""",
    "stdlib_poisoning": """
import os
for p in (os.__file__, os.path.dirname(os.__file__) + '/sitecustomize.py', '/usr/lib/r1mega-escape-marker'):
    try: open(p, 'a').write('import os; os.system("touch /tmp/r1mega-escape-marker")')
    except Exception as e: print(e)
open('/tmp/leftover', 'w').write('for the next program')
""",
}


def _fmt(code: str, host: dict) -> str:
    return code.format(**{k: v for k, v in host.items() if isinstance(v, (str, int))})


def _assert_host_untouched(host: dict) -> None:
    assert _snapshot(host["root"]) == host["snapshot"], "a canary changed"
    for m in MARKERS:
        assert not os.path.lexists(m), m
    for s in (host["tcp"], host["abstract"]):
        with pytest.raises(BlockingIOError):
            s.accept()
    assert host["victim_proc"].poll() is None, "the host process was killed"
    assert os.getpid() == host["ppid"]
    zygotes = {z.proc.pid for z in sandbox._Zygote._all}  # every sandbox process descends from one
    leftovers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if zygotes & set(_ancestors(pid))]
    assert not leftovers, "sandbox processes outlived their run"
    named = [p for p in glob.glob("/proc/[0-9]*/comm") if _read(p).strip() == b"r1m-leftover"]
    assert not named, "a program's grandchild outlived its run"


def _read(p: str) -> bytes:
    try:
        return open(p, "rb").read()
    except OSError:
        return b""


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(pid)
    return chain


def test_escapes_are_contained(host):
    """All attacks, concurrently through the worker pool, then each one's specific outcome."""
    names = list(ATTACKS)
    roomy = Limits(wall_seconds=10, cpu_seconds=4, memory_bytes=256 * 2 ** 20)  # slow work on a busy machine
    lims = {n: SHORT if n in ("setsid_grandchild_outlives_timeout", "fork_bomb") else roomy for n in names}
    results = dict(zip(names, run_many([Job(_fmt(ATTACKS[n], host), limits=lims[n]) for n in names])))
    time.sleep(4.5)  # the setsid grandchild would write at 4 s; its run was killed at 2 s
    _assert_host_untouched(host)
    for name, res in results.items():
        shown = res.stdout + res.stderr
        assert SECRET not in shown and "root:x:0:0" not in shown, (name, shown[:2000])
    r = results
    assert r["setsid_grandchild_outlives_timeout"].reason.startswith("wall-clock timeout")
    assert r["grandchild_holds_stdout_open"].ok and r["grandchild_holds_stdout_open"].stdout == "parent leaves\n"
    huge = r["huge_stdout"]
    assert huge.reason.startswith("output limit") and len(huge.stdout) <= roomy.output_bytes + 200, huge.reason
    disk = r["fill_the_disk"].stdout
    assert "one file [Errno 27] File too large" in disk and "stopped [Errno 28] No space left" in disk, disk
    assert int(disk.rsplit("wrote ", 1)[1]) <= roomy.disk_bytes
    assert not r["memory_bomb"].ok and "memory limit" in r["memory_bomb"].reason
    assert not r["fork_bomb"].ok
    out = r["namespaces_mount_chroot_bpf"].stdout
    for call in ("mount", "chroot", "userns", "bpf", "io_uring", "pdeathsig", "keyctl"):
        assert f"{call} -1 1\n" in out, (call, out)  # EPERM
    assert "setuid0 -1 22\n" in out  # uid 0 does not exist in the sandbox's user namespace
    assert "Read-only file system" in r["namespaces_mount_chroot_bpf"].stderr
    setns = r["setns_host_netns_then_loopback"].stdout
    assert "unshare -1 1" in setns and "abstract ok" not in setns and "raw socket" not in setns
    assert "attach" in r["ptrace_and_process_memory"].stdout and " 0 0\n" not in r["ptrace_and_process_memory"].stdout
    devs = r["dev_access"].stdout
    assert sorted(ast.literal_eval(devs.splitlines()[0])) == ["null", "random", "shm", "urandom", "zero"]  # shm: -> /tmp
    assert "opened" not in devs
    sig = r["signals_to_parent_and_host"].stdout
    assert f"{host['ppid']} [Errno 3]" in sig and f"{host['victim']} [Errno 3]" in sig, sig  # no such process
    sched = r["scheduler_hostname_clone_parent"].stdout
    assert "raised priority" not in sched and "host sandbox\n" in sched and "clone_parent -1 22" in sched, sched
    assert "exec tmp [Errno 13]" in r["setuid_binary_and_memfd_exec"].stdout  # noexec /tmp
    secrets_out = r["read_secrets"].stdout
    assert "glob" not in secrets_out and "/work" not in secrets_out and "site-packages []\n" in secrets_out
    # the next program runs normally, and sees nothing left over
    nxt = run_code("import os\nprint(os.listdir('/tmp'), 2 + 2)", limits=FAST)
    assert nxt.ok and nxt.stdout == "[] 4\n", nxt


TOKEN_HUNT = """
import gc, os, sys
def strings(o, seen, depth=0):
    if id(o) in seen or depth > 6: return
    seen.add(id(o))
    if isinstance(o, (str, bytes)):
        yield o
    elif isinstance(o, dict):
        for v in list(o.values()) + list(o.keys()): yield from strings(v, seen, depth + 1)
    elif isinstance(o, (list, tuple, set, frozenset)) and o is not seen:
        for v in list(o): yield from strings(v, seen, depth + 1)
roots = [sys.modules['__main__'].__dict__] + gc.get_objects()
f = sys._getframe()
while f: roots += [f.f_locals, f.f_globals]; f = f.f_back
seen = set()
for r in roots:
    for x in list(strings(r, seen)):
        x = x.encode() if isinstance(x, str) else x
        if x.startswith(b'r1mega-sandbox-done-') and len(x) > 40:
            os.write(1, b'\\n' + x + b'\\n'); os._exit(0)
"""


@pytest.mark.parametrize("code", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "raise SystemExit",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "import os\nos.close(1)",
    "import sys\nprint('r1mega-sandbox-done-' + '0' * 32)\nsys.exit(0)",
    "import sys\nsys.stdout = open('/dev/null', 'w')",
    "import os\nos.execv('/bin/true', ['true'])",
    "import threading, os\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)",
    TOKEN_HUNT,
])
def test_leaving_before_the_tests_scores_zero(code):
    res = run_tests(code, "assert False, 'the tests ran and failed'", limits=FAST)
    assert not res.ok, res
    sample = {"tests": "assert False"}
    assert code_reward(f"```python\n{code}\n```", sample) == 0.0


# ---------------------------------------------------------------- correct programs keep passing

def _solved(code: str, tests) -> tuple:
    return textwrap.dedent(code).lstrip("\n"), textwrap.dedent(tests).strip() if isinstance(tests, str) else tests


NUMBERS = " ".join(str((i * 7919) % 100003) for i in range(100000))
SOLVED = [_solved(*case) for case in [  # (solution, asserts run after it, or stdin/stdout cases)
    ("""
     def two_sum(nums, target):
         seen = {}
         for i, x in enumerate(nums):
             if target - x in seen:
                 return [seen[target - x], i]
             seen[x] = i
     """, "assert two_sum([2, 7, 11, 15], 9) == [0, 1]\nassert two_sum([3, 2, 4], 6) == [1, 2]"),
    ("""
     from bisect import bisect_left
     def lis(a):
         t = []
         for x in a:
             i = bisect_left(t, x)
             t[i:i + 1] = [x]
         return len(t)
     """, "assert lis([10, 9, 2, 5, 3, 7, 101, 18]) == 4\nassert lis(list(range(5000))) == 5000"),
    ("""
     import heapq, sys
     def main():
         data = sys.stdin.read().split()
         n, m = int(data[0]), int(data[1])
         g = [[] for _ in range(n)]
         for i in range(m):
             u, v, w = map(int, data[2 + 3 * i: 5 + 3 * i])
             g[u].append((v, w))
             g[v].append((u, w))
         d = [float("inf")] * n
         d[0], h = 0, [(0, 0)]
         while h:
             du, u = heapq.heappop(h)
             if du > d[u]:
                 continue
             for v, w in g[u]:
                 if du + w < d[v]:
                     d[v] = du + w
                     heapq.heappush(h, (d[v], v))
         print(" ".join(map(str, d)))
     main()
     """, [{"input": "4 4\n0 1 1\n1 2 2\n0 2 5\n2 3 1\n", "output": "0 1 3 4"}]),
    ("""
     import re
     from collections import Counter
     def top_words(text, k):
         c = Counter(re.findall(r"[a-z]+", text.lower()))
         return [w for w, _ in sorted(c.items(), key=lambda x: (-x[1], x[0]))[:k]]
     """, "assert top_words('The cat and the hat. The END and', 2) == ['the', 'and']"),
    ("""
     from itertools import permutations, combinations
     def count_perm(n):
         return sum(1 for _ in permutations(range(n)))
     def pairs(s):
         return ["".join(c) for c in combinations(s, 2)]
     """, "assert count_perm(7) == 5040\nassert pairs('abc') == ['ab', 'ac', 'bc']"),
    ("""
     from functools import lru_cache
     @lru_cache(maxsize=None)
     def fib(n):
         return n if n < 2 else fib(n - 1) + fib(n - 2)
     """, "assert fib(200) == 280571172992510140037611932413038677189525"),
    ("""
     import sys
     sys.setrecursionlimit(1 << 20)
     def depth(n):
         return 0 if n == 0 else 1 + depth(n - 1)
     """, "assert depth(100000) == 100000"),
    ("""
     import string
     def caesar(s, k):
         a = string.ascii_lowercase
         return s.translate(str.maketrans(a, a[k:] + a[:k]))
     """, "assert caesar('hello', 3) == 'khoor'"),
    ("""
     import math
     def stats(n):
         return math.isqrt(n), math.gcd(n, 84), math.lcm(4, 6), round(math.log2(n), 3)
     """, "assert stats(1000) == (31, 4, 12, 9.966)"),
    ("""
     def big_sum(n):
         a = list(range(n))
         b = [x * 2 for x in a]
         return sum(b)
     """, "assert big_sum(3_000_000) == 3_000_000 * (3_000_000 - 1)"),
    ("""
     import sys
     nums = sorted(map(int, sys.stdin.read().split()))
     print(*nums[:3])
     print(sum(nums))
     sys.exit(0)
     """, [{"input": NUMBERS, "output": f"0 1 2\n{sum(map(int, NUMBERS.split()))}"}]),
    ("""
     from collections import deque, defaultdict
     from fractions import Fraction
     from decimal import Decimal
     import dataclasses, typing, random, statistics, tempfile, json
     def bfs(edges, s):
         g = defaultdict(list)
         for u, v in edges:
             g[u].append(v)
         seen, q = {s}, deque([s])
         while q:
             u = q.popleft()
             for v in g[u]:
                 if v not in seen:
                     seen.add(v)
                     q.append(v)
         return sorted(seen)
     with tempfile.TemporaryDirectory() as d:
         open(d + "/x.json", "w").write(json.dumps([1]))
     """, """
     assert bfs([(1, 2), (2, 3), (4, 5)], 1) == [1, 2, 3]
     assert Fraction(1, 3) + Fraction(1, 6) == Fraction(1, 2)
     assert str(Decimal("0.1") + Decimal("0.2")) == "0.3"
     assert statistics.median([3, 1, 2]) == 2
     """),
    ("""
     n = int(input())
     for i in range(1, n + 1):
         print("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else i)
     """, [{"input": "5\n", "output": "1 2 Fizz 4 Buzz"},
           {"input": "15\n", "output": "1 2 Fizz 4 Buzz Fizz 7 8 Fizz Buzz 11 Fizz 13 14 FizzBuzz"}]),
]]


def test_correct_programs_pass_through_the_code_reward():
    texts = [f"<think>ok</think>\n```python\n{code}```" for code, _ in SOLVED]
    samples = [{"tests": tests} for _, tests in SOLVED]
    with code_rewards_in_parallel(texts, samples) as programs:  # the GRPO loop's path: one pool per batch
        rewards = [code_reward(t, s, programs) for t, s in zip(texts, samples)]
    assert rewards == [1.0] * len(SOLVED), [(i, r) for i, r in enumerate(rewards) if r != 1.0]
    # and one wrong answer per form scores 0 (the harness does judge)
    assert code_reward("```python\ndef two_sum(nums, target):\n    return [0, 0]\n```", samples[0]) == 0.0
    assert code_reward("```python\nprint('0 1 3 5')\n```", samples[2]) == 0.0
    res = run_code("import sys\nprint(sum(map(int, sys.stdin.read().split())))", stdin="1 2 3\n" * 50000)
    assert res.ok and res.stdout == "300000\n", res


def test_limits_report_their_reason():
    cases = [("while True:\n    pass", "CPU time limit"), ("import time\ntime.sleep(60)", "wall-clock timeout"),
             ("raise ValueError('bad')", "error: ValueError: bad")]
    lims = [Limits(wall_seconds=30, cpu_seconds=1), Limits(wall_seconds=1.5), FAST]  # CPU limit well inside the wall
    for (code, reason), res in zip(cases, run_many([Job(c, limits=lim) for (c, _), lim in zip(cases, lims)])):
        assert not res.ok and res.reason.startswith(reason), res


def _code_reward_on_rank(rank: int, world: int) -> list[float]:
    """On a gloo rank (torch imported, threads running), the GRPO loop's reward path."""
    import torch.distributed as dist

    from r1mega.rl.rewards import code_rewards_in_parallel, total_reward

    good = "```python\ndef f(x):\n    return x + 1\n```"
    bad = "```python\nimport sys\nsys.exit(0)\ndef f(x):\n    return x + 1\n```"
    escape = "```python\nopen('/r1mega-escape-marker', 'w').write('x')\ndef f(x):\n    return x + 1\n```"
    sample = {"tests": "assert f(1) == 2"}
    texts = [good, bad, escape]
    with code_rewards_in_parallel(texts, [sample] * 3) as programs:
        out = [total_reward(["code"], t, sample, programs) for t in texts]
    dist.barrier()
    return out


@pytest.mark.slow
def test_code_reward_on_distributed_ranks():
    from spawn_cases import run_ranks

    for per_rank in run_ranks(_code_reward_on_rank, 2):
        assert per_rank == [1.0, 0.0, 0.0]
    assert not os.path.lexists("/r1mega-escape-marker")


def test_refuses_without_isolation_unless_opted_in(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "user namespaces are disabled (test)")
    with pytest.raises(sandbox.SandboxUnavailable, match="user namespaces are disabled.*rl.unsafe_code_sandbox=true"):
        run_code("print(1)")
    with pytest.raises(sandbox.SandboxUnavailable):
        code_reward("```python\nprint(1)\n```", {"tests": "pass"})
    sandbox.allow_unsafe(True)
    try:
        with pytest.warns(RuntimeWarning, match="WITHOUT isolation"):
            res = run_tests("def f():\n    return 3\n", "assert f() == 3", limits=FAST)
        assert res.ok, res
        with pytest.warns(RuntimeWarning):
            assert not run_tests("import sys\nsys.exit(0)", "assert False", limits=FAST).ok
    finally:
        sandbox.allow_unsafe(False)


def test_grpo_with_a_code_reward_refuses_at_start_up(monkeypatch, tmp_path):
    from r1mega.config import load_config
    from r1mega.rl.grpo import grpo

    root = os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__)))
    cfg = load_config(os.path.join(os.path.dirname(root), "configs", "tiny", "r1_zero_demo.yaml"),
                      [f"train.run_dir={tmp_path}/run", "rl.rewards=[code]"])
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "user namespaces are disabled (test)")
    with pytest.raises(sandbox.SandboxUnavailable, match="user namespaces are disabled"):
        grpo(cfg)
    assert not os.path.exists(f"{tmp_path}/run")  # nothing started


def test_seccomp_numbers_match_libseccomp():
    """The hand-written syscall tables agree with libseccomp's where that library is installed."""
    import ctypes
    import ctypes.util

    from r1mega.sandbox import seccomp as sc

    path = ctypes.util.find_library("seccomp")
    if not path:
        pytest.skip("libseccomp not installed")
    lib = ctypes.CDLL(path)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for machine, (arch, table) in sc._ARCHES.items():
        for name, nr in table.items():
            got = lib.seccomp_syscall_resolve_name_arch(arch, name.encode())
            if got < 0 and nr >= 457:  # statmount and later: newer than an older libseccomp knows
                continue
            assert got == nr, (machine, name)


ID_PATHS = """
import os, sys
from r1mega.sandbox import isolation as sandbox
canary = sys.argv[1]
assert sandbox.isolation_problem() is None, sandbox.isolation_problem()
r = sandbox.run_code(f"import os\\nprint(os.getuid(), os.listdir('/'))\\nopen({canary!r}, 'w').write('x')")
assert not r.ok and "No such file or directory" in r.reason, r
inside = int(r.stdout.split()[0])
ok = sandbox.run_tests("def f():\\n    return 1\\n", "assert f() == 1").ok
gamed = sandbox.run_tests("import sys\\nsys.exit(0)", "assert False").ok
judged = sandbox.judge("def f(x):\\n    return x + 1\\n", "def check(c):\\n    assert c(1) == 2\\n", "f").ok
forged = sandbox.judge("class E:\\n    __eq__ = lambda s, o: True\\ndef f(x):\\n    return E()\\n", "assert f(1) == 2").ok
print(os.geteuid(), inside, ok, gamed, judged, forged)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/unshare"),
                    reason="needs root and util-linux unshare")
@pytest.mark.parametrize("wrap, outer, inside", [
    (["--map-user=1000", "--map-group=1000"], 1000, 1000),  # an ordinary user: unprivileged user namespace
    (["--map-root-user"], 0, 65534),  # a rootless container's root, where nobody does not exist
])
def test_other_identities(tmp_path, wrap, outer, inside):
    canary = tmp_path / "canary"
    canary.write_text("keep")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__))))
    p = subprocess.run(["unshare", "--user", *wrap, sys.executable, "-c", ID_PATHS, str(canary)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(outer), str(inside), "True", "False", "True", "False"], p.stdout
    assert canary.read_text() == "keep"
