"""Run untrusted generated code (the `code` reward) in kernel-enforced isolation.

Each program gets a fresh supervisor process (`sandbox_init.py`) that puts it in new user, PID,
mount, network, IPC, UTS and cgroup namespaces as an unprivileged uid (nobody when the trainer is
root), on a root built from scratch: read-only binds of the Python stdlib and system libraries,
/dev/{null,zero,random,urandom}, a size-capped private tmpfs at /tmp, and no /proc, /etc, home,
checkpoints or sockets of the host. It then drops every capability, sets no_new_privs and a
seccomp filter (r1mega/rl/seccomp.py), and applies memory, CPU, process, file-size and open-file
rlimits. The program runs as PID 1 of its namespace, so killing it (at the wall-clock limit, by the
supervisor; or by the kernel when the supervisor dies) kills every process it started. Output is
read here with a byte cap and a deadline; nothing waits unboundedly.

Success is never the exit status: the harness prints a random per-run token as the last line of
stdout only after the program (and its tests) ran to the end.

Where the kernel refuses the namespaces (e.g. containers whose seccomp profile blocks unshare),
code rewards raise SandboxUnavailable naming the reason, unless the run opted in with
`rl.unsafe_code_sandbox=true` (then: rlimits, nobody, seccomp and timeouts only, and a warning).
"""
from __future__ import annotations

import base64
import functools
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

from r1mega.rl import seccomp

INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_init.py")
SETUP_GRACE = 15.0  # seconds the trainer allows beyond the wall limit for start-up and teardown
UNSAFE_HINT = ("set rl.unsafe_code_sandbox=true to run generated code without isolation "
               "(only for code you trust: it can then read and write what the trainer's user can)")


class SandboxUnavailable(RuntimeError):
    """Strong isolation cannot be set up on this machine and the run did not opt out of it."""


@dataclass
class Limits:
    wall_seconds: float = 5.0
    cpu_seconds: int = 4
    memory_bytes: int = 512 * 2 ** 20  # address space per process
    disk_bytes: int = 16 * 2 ** 20  # the writable tmpfs at /tmp, shared by all its processes
    file_bytes: int = 4 * 2 ** 20  # one file
    processes: int = 16  # processes + threads of the sandbox's uid, supervisor included
    open_files: int = 64
    output_bytes: int = 2 ** 20  # stdout kept; more kills the program
    stderr_bytes: int = 64 * 2 ** 10  # stderr kept; more is dropped


@dataclass
class SandboxResult:
    ok: bool  # ran to the end (the harness's token arrived) within every limit
    reason: str  # "ok" or what stopped it
    returncode: int  # the program's exit status (negative: killed by that signal)
    stdout: str  # without the harness's token line
    stderr: str


@dataclass
class Job:
    code: str
    stdin: str = ""
    tests: Optional[str] = None  # Python run after the code in the same namespace (asserts)
    limits: Limits = field(default_factory=Limits)


_policy = {"unsafe": False}


def allow_unsafe(flag: bool) -> None:
    """rl.unsafe_code_sandbox: where isolation is unavailable, run code without it (warned)."""
    _policy["unsafe"] = bool(flag)


@functools.lru_cache(maxsize=None)
def isolation_problem() -> Optional[str]:
    """None where the isolated sandbox works on this machine, else why not (probed once)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if not seccomp.supported():
        return f"no seccomp syscall table for {os.uname().machine}"
    res = _run(Job("print(6 * 7)", limits=Limits(wall_seconds=20)), isolate=True)
    if res.ok and res.stdout == "42\n":
        return None
    return res.reason if res.reason.startswith("sandbox setup failed") else f"sandbox self-test failed: {res.reason}"


def require_isolation() -> bool:
    """True where the isolated sandbox runs; else raise SandboxUnavailable with the reason, or,
    with allow_unsafe(True), warn and return False (programs then run without isolation)."""
    problem = isolation_problem()
    if problem is None:
        return True
    if not _policy["unsafe"]:
        raise SandboxUnavailable(f"refusing to run generated code: {problem}; {UNSAFE_HINT}")
    warnings.warn(f"rl.unsafe_code_sandbox=true: running generated code WITHOUT isolation ({problem})",
                  RuntimeWarning, stacklevel=3)
    return False


def run_code(code: str, stdin: str = "", limits: Limits = Limits(), tests: Optional[str] = None) -> SandboxResult:
    """Run `code` (then `tests`, if given) on `stdin`; never raises for anything the code does."""
    return _run(Job(code, stdin, tests, limits), require_isolation())


def run_tests(code: str, tests: str, limits: Limits = Limits()) -> SandboxResult:
    """Run generated code followed by its test code (asserts) in one sandboxed program."""
    return run_code(code, limits=limits, tests=tests)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_many(jobs: list[Job], workers: Optional[int] = None) -> list[SandboxResult]:
    """Run jobs concurrently (one sandbox each; threads only wait on pipes), results in order."""
    if not jobs:
        return []
    isolate = require_isolation()
    with ThreadPoolExecutor(max_workers=min(len(jobs), workers or default_workers())) as pool:
        return list(pool.map(lambda j: _run(j, isolate), jobs))


# ---------------------------------------------------------------- one program


def _run(job: Job, isolate: bool) -> SandboxResult:
    lim = job.limits
    token = "r1mega-sandbox-done-" + secrets.token_hex(16)
    payload = json.dumps({
        "code": job.code, "tests": job.tests, "stdin": job.stdin, "token": token, "isolate": isolate,
        "limits": asdict(lim), "seccomp": base64.b64encode(seccomp.build_filter()).decode(),
    }).encode()
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", INIT, str(status_w)], env={}, cwd="/",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
            start_new_session=True)
    except OSError as e:
        os.close(status_r)
        return SandboxResult(False, f"sandbox setup failed: could not start the supervisor: {e}", -1, "", "")
    finally:
        os.close(status_w)
    out, err, status, killed = _exchange(proc, payload, status_r, lim)
    return _result(out, err, status, killed, token, lim)


def _exchange(proc: subprocess.Popen, payload: bytes, status_r: int, lim: Limits):
    """Feed the job, collect capped output and the supervisor's status, all before a deadline."""
    in_fd, out_fd, err_fd = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    caps = {out_fd: lim.output_bytes + 128, err_fd: lim.stderr_bytes}  # + room for the token line
    bufs = {fd: bytearray() for fd in caps}
    status = bytearray()
    sel = selectors.DefaultSelector()
    os.set_blocking(in_fd, False)
    sel.register(in_fd, selectors.EVENT_WRITE)
    for fd in (*caps, status_r):
        sel.register(fd, selectors.EVENT_READ)
    view, killed = memoryview(payload), None
    deadline = time.monotonic() + lim.wall_seconds + SETUP_GRACE
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if killed:  # already killed and still not at EOF: stop waiting
                    break
                killed = killed or "timeout"
                _kill(proc)
                deadline = time.monotonic() + 2.0
                continue
            for key, _ in sel.select(timeout=left):
                fd = key.fd
                if fd == in_fd:
                    try:
                        view = view[os.write(fd, view[:65536]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the supervisor died; its status (or none) says why
                        view = view[:0]
                    if not view:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    continue
                if fd == status_r:
                    status += chunk[:65536 - len(status)]
                    continue
                room = caps[fd] - len(bufs[fd])
                bufs[fd] += chunk[:max(room, 0)]
                if len(chunk) > room and fd == out_fd and not killed:
                    killed = "output"
                    _kill(proc)
                    deadline = min(deadline, time.monotonic() + 2.0)
    finally:
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        os.close(status_r)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait(timeout=2.0)
    try:
        st = json.loads(bytes(status)) if status else {}
    except ValueError:
        st = {}
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), st, killed


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the supervisor; the kernel then kills init (parent-death signal) and its namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(out: bytes, err: bytes, st: dict, killed: Optional[str], token: str, lim: Limits) -> SandboxResult:
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    setup = st.get("setup")
    code = int(st.get("exit", -signal.SIGKILL))
    if setup not in (None, "ok"):
        return SandboxResult(False, f"sandbox setup failed: {setup}", code, "", stderr)
    tail = f"\n{token}\n"
    finished = stdout.endswith(tail)
    if finished:
        stdout = stdout[:-len(tail)]
    if killed == "output":
        return SandboxResult(False, f"output limit ({lim.output_bytes} bytes)", code, stdout, stderr)
    if killed == "timeout" or st.get("timeout"):
        return SandboxResult(False, f"wall-clock timeout after {lim.wall_seconds:g} s", code, stdout, stderr)
    if setup is None:
        return SandboxResult(False, "sandbox supervisor died without a status", code, stdout, stderr)
    if finished and code == 0:
        return SandboxResult(True, "ok", 0, stdout, stderr)
    return SandboxResult(False, _reason(code, stderr, float(st.get("cpu", 0.0)), lim), code, stdout, stderr)


def _reason(code: int, err: str, cpu: float, lim: Limits) -> str:
    if code in (-signal.SIGKILL, -signal.SIGXCPU) and cpu >= lim.cpu_seconds - 0.05:
        return f"CPU time limit ({lim.cpu_seconds} s)"
    if code == -signal.SIGXFSZ:
        return f"file size limit ({lim.file_bytes} bytes)"
    if "MemoryError" in err:
        return f"memory limit ({lim.memory_bytes // 2 ** 20} MiB)"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"killed ({code})"
    if code == 0:
        return "exited before the harness finished (no completion token)"
    last = err.strip().splitlines()[-1] if err.strip() else f"exit status {code}"
    return f"error: {last}"
