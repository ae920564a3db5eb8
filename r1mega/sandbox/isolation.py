"""Run untrusted generated code (the `code` reward) in kernel-enforced isolation.

Each program gets a fresh supervisor process (`sandbox_init.py`, forked by a zygote started once
per trainer process) that puts it in new user, PID, mount, network, IPC, UTS and cgroup namespaces
as an unprivileged uid (nobody when the trainer is root), on a root built from scratch: read-only
binds of the Python stdlib and of the directories of the shared libraries the interpreter loaded,
/dev/{null,zero,random,urandom}, a size-capped private tmpfs at /tmp, and no /proc, /etc, home,
site-packages, checkpoints or sockets of the host. It then drops every capability, sets no_new_privs and a
seccomp filter (r1mega/sandbox/seccomp.py), and applies memory, CPU, process, file-size and open-file
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
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

from r1mega.sandbox import seccomp

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
    memory_bytes: int = 512 * 2 ** 20  # address space per process (no cgroup: a program holds <= processes x this)
    disk_bytes: int = 16 * 2 ** 20  # the writable tmpfs at /tmp, shared by all its processes
    file_bytes: int = 4 * 2 ** 20  # one file
    processes: int = 6  # processes + threads of the sandbox's uid, supervisor and init included
    open_files: int = 64
    output_bytes: int = 2 ** 20  # stdout kept; more kills the program
    stderr_bytes: int = 64 * 2 ** 10  # stderr kept; more is dropped


@dataclass
class SandboxResult:
    ok: bool  # ran to the end (the harness's token arrived) within every limit
    reason: str  # "ok" or what stopped it
    returncode: int  # the program's exit status (negative: killed by that signal)
    stdout: str  # without the harness's token line (and values line)
    stderr: str
    values: Optional[list] = None  # with Job.calls: one {"v": encoded value} or {"e": error} per expression


@dataclass
class Job:
    code: str
    stdin: str = ""
    tests: Optional[str] = None  # Python run after the code in the same namespace (asserts)
    limits: Limits = field(default_factory=Limits)
    # instead of tests: {"setup", "exprs", "bind"} from r1mega.sandbox.code_tests; the expressions' values
    # come back in SandboxResult.values and are judged in the trainer (the forge-proof path)
    calls: Optional[dict] = None


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


class _Zygote:
    """The per-process forker of supervisors (sandbox_init.zygote), started on first use."""

    _lock = threading.Lock()
    _current: Optional["_Zygote"] = None

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-X", "utf8", INIT, str(theirs.fileno())], env={}, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True)
        finally:
            theirs.close()
        self.owner = os.getpid()

    @classmethod
    def submit(cls, fds: list[int]) -> None:
        for attempt in range(2):
            with cls._lock:
                z = cls._current
                if z is None or z.owner != os.getpid() or z.proc.poll() is not None:
                    z = cls._current = _Zygote()  # first use, a forked trainer, or a dead zygote
            try:
                socket.send_fds(z.sock, [b"job"], fds)
                return
            except OSError:
                if attempt:
                    raise
                with cls._lock:
                    if cls._current is z:
                        cls._current = None


def _run(job: Job, isolate: bool) -> SandboxResult:
    lim = job.limits
    token = "r1mega-sandbox-done-" + secrets.token_hex(16)
    payload = json.dumps({
        "code": job.code, "tests": job.tests, "calls": job.calls, "stdin": job.stdin, "token": token,
        "isolate": isolate,
        "limits": asdict(lim), "seccomp": _filter_b64(),
    }).encode()
    (job_r, job_w), (out_r, out_w), (err_r, err_w), (st_r, st_w) = (os.pipe() for _ in range(4))
    theirs, mine = [job_r, out_w, err_w, st_w], [job_w, out_r, err_r, st_r]  # job pipe: job, then abort
    try:
        _Zygote.submit(theirs)
    except OSError as e:
        for fd in mine:
            os.close(fd)
        return SandboxResult(False, f"sandbox setup failed: could not reach the sandbox zygote: {e}", -1, "", "")
    finally:
        for fd in theirs:
            os.close(fd)
    out, err, status, killed = _exchange(mine, len(payload).to_bytes(8, "little") + payload, lim)
    res = _result(out, err, status, killed, token, lim)
    if job.calls is not None and res.ok:
        from r1mega.sandbox.code_tests import values_from_stdout

        res.stdout, res.values = values_from_stdout(res.stdout)
    return res


@functools.lru_cache(maxsize=None)
def _filter_b64() -> str:
    return base64.b64encode(seccomp.build_filter()).decode()


def _exchange(fds: list[int], payload: bytes, lim: Limits):
    """Feed the job, collect capped output and the supervisor's status, all before a deadline.
    Closing the job pipe is the abort: the supervisor then kills the program's namespace."""
    in_fd, out_fd, err_fd, status_fd = fds
    caps = {out_fd: lim.output_bytes + 128, err_fd: lim.stderr_bytes, status_fd: 65536}  # + the token line
    bufs = {fd: bytearray() for fd in caps}
    sel = selectors.DefaultSelector()
    os.set_blocking(in_fd, False)
    sel.register(in_fd, selectors.EVENT_WRITE)
    for fd in caps:
        sel.register(fd, selectors.EVENT_READ)
    view, killed, aborted = memoryview(payload), None, False
    deadline = time.monotonic() + lim.wall_seconds + SETUP_GRACE

    def abort(why: str) -> None:
        nonlocal killed, aborted, deadline
        killed = killed or why
        if not aborted:
            aborted = True
            if in_fd in sel.get_map():
                sel.unregister(in_fd)
            os.close(in_fd)
        deadline = min(deadline, time.monotonic() + 2.0)

    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if aborted:  # aborted and still no EOF: stop waiting
                    break
                abort("timeout")
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
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    continue
                room = caps[fd] - len(bufs[fd])
                bufs[fd] += chunk[:max(room, 0)]
                if len(chunk) > room and fd == out_fd:
                    abort("output")
    finally:
        sel.close()
        if not aborted:
            os.close(in_fd)
        for fd in (out_fd, err_fd, status_fd):
            os.close(fd)
    try:
        st = json.loads(bytes(bufs[status_fd])) if bufs[status_fd] else {}
    except ValueError:
        st = {}
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), st, killed


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
        return SandboxResult(False, f"output limit ({lim.output_bytes} bytes)", code, stdout[:lim.output_bytes], stderr)
    if killed == "timeout" or st.get("timeout") and code == -signal.SIGKILL:  # else it ended on its own just then
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
