"""Run untrusted generated code: a child process with CPU-time, memory, file-size, open-file and
process limits, a wall-clock timeout that kills its whole process group, a fresh temporary working
directory, an empty environment, no network, and no writes outside its directory.

Layers, outermost first: (1) a new network namespace (only a down loopback) where the kernel
allows it (root, or unprivileged user namespaces); (2) rlimits (RLIMIT_NPROC binds non-root users
only; for root the audit hook is what stops a fork bomb); (3) inside the child, a Python audit hook
that refuses sockets, process creation, ctypes and writes outside the working directory before
they happen, and reports which rule fired. Every outcome comes back as a
`SandboxResult` with a one-line reason; nothing raises into the trainer.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
BLOCKED_EXIT = 97  # the child's audit hook refused an operation; stderr names it

RUNNER = r'''
import os, sys
root = os.path.realpath(os.getcwd())

def refuse(what):
    sys.stderr.write("sandbox-blocked: " + what + "\n")
    sys.stderr.flush()
    os._exit(%(blocked)d)

def hook(event, args):
    if event in ("socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo"):
        refuse("network access (" + event + ")")
    if event in ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                 "subprocess.Popen", "os.kill", "os.killpg"):
        refuse("process creation (" + event + ")")
    if event in ("ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"):
        refuse("native code (" + event + ")")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        if writing and isinstance(path, (str, bytes)):
            p = os.path.realpath(os.fsdecode(path))
            if not (p == root or p.startswith(root + os.sep)):
                refuse("write outside the sandbox directory (" + p + ")")
    if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.symlink", "os.link"):
        p = os.path.realpath(os.fsdecode(args[0]))
        if not (p == root or p.startswith(root + os.sep)):
            refuse("filesystem change outside the sandbox directory (" + p + ")")

sys.addaudithook(hook)
del hook
with open("solution.py") as f:
    source = f.read()
exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
''' % {"blocked": BLOCKED_EXIT}


@dataclass
class SandboxResult:
    ok: bool  # exited 0 within every limit
    reason: str  # "ok" or what stopped it
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Limits:
    wall_seconds: float = 5.0
    cpu_seconds: int = 4
    memory_bytes: int = 512 * 2 ** 20
    file_bytes: int = 4 * 2 ** 20
    processes: int = 16
    open_files: int = 64


def _preexec(limits: Limits, root: bool) -> None:
    os.setsid()
    try:  # a private network namespace: no interface but a down loopback
        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET if root else CLONE_NEWNET | CLONE_NEWUSER)
    except Exception:
        pass  # the audit hook still refuses sockets
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_code(code: str, stdin: str = "", limits: Limits = Limits()) -> SandboxResult:
    workdir = tempfile.mkdtemp(prefix="r1mega-sandbox-")
    root = os.geteuid() == 0
    try:
        with open(os.path.join(workdir, "solution.py"), "w") as f:
            f.write(code)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", RUNNER], cwd=workdir, env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: _preexec(limits, root))
        try:
            out, err = proc.communicate(stdin, timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return SandboxResult(False, f"wall-clock timeout after {limits.wall_seconds:g} s", -9, out, err)
        return SandboxResult(proc.returncode == 0, _reason(proc.returncode, err, limits), proc.returncode, out, err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _reason(code: int, err: str, limits: Limits) -> str:
    if code == 0:
        return "ok"
    if code == BLOCKED_EXIT and "sandbox-blocked:" in err:
        return "blocked: " + err.split("sandbox-blocked:", 1)[1].strip().splitlines()[0]
    if code == -signal.SIGXCPU or code == -signal.SIGKILL and "MemoryError" not in err:
        return f"CPU time limit ({limits.cpu_seconds} s)" if code == -signal.SIGXCPU else "killed"
    if code == -signal.SIGXFSZ:
        return f"file size limit ({limits.file_bytes} bytes)"
    if "MemoryError" in err:
        return f"memory limit ({limits.memory_bytes // 2 ** 20} MiB)"
    last = err.strip().splitlines()[-1] if err.strip() else f"exit status {code}"
    return f"error: {last}"


def run_tests(code: str, tests: str, limits: Limits = Limits()) -> SandboxResult:
    """Run generated code followed by its test code (asserts) in one sandboxed process."""
    return run_code(code + "\n\n" + tests + "\n", limits=limits)
