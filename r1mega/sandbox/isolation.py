"""Run untrusted generated code (the `code` reward) in kernel-enforced isolation.

Each program gets a fresh supervisor process (`sandbox_init.py`, forked by a zygote started once
per trainer process) that puts it in a memory cgroup of its own (where one can be made) and new
user, PID, mount, network, IPC, UTS and cgroup namespaces as an unprivileged uid (nobody inside,
a host uid of its own when the trainer is root), on a root built from scratch: read-only
binds of the Python stdlib and of the directories of the shared libraries the interpreter loaded,
/dev/{null,zero,random,urandom}, a size-capped private tmpfs at /tmp, and no /proc, /etc, home,
site-packages, checkpoints or sockets of the host. It then drops every capability, sets no_new_privs and a
seccomp filter (r1mega/sandbox/seccomp.py), and applies memory, CPU, process, file-size and open-file
rlimits. The program runs as PID 1 of its namespace, so killing it (at the wall-clock limit, by the
supervisor; or by the kernel when the supervisor dies) kills every process it started. Output is
read here with a byte cap and a deadline; nothing waits unboundedly.

Success is never the exit status: the harness prints a random per-run token as the last line of
stdout only after the program (and its tests) ran to the end. Judged jobs (the code reward's)
run their tests in a separate judge process that calls the program over plain data (_judged).

Where the kernel refuses the namespaces (e.g. containers whose seccomp profile blocks unshare),
code rewards raise SandboxUnavailable naming the reason, unless the run opted in with
`rl.unsafe_code_sandbox=true` (then: rlimits, nobody, seccomp and timeouts only, and a warning).
"""
from __future__ import annotations

import atexit
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Optional

from r1mega.errors import R1MegaError
from r1mega.sandbox import code_tests, seccomp

INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_init.py")
SETUP_GRACE = 15.0  # seconds the trainer allows beyond the wall limit for start-up and teardown
# A program that writes without pause (stderr past its cap is read and dropped) woke the trainer for
# every pipeful: ~60% of a core, under the GIL, for its whole wall time. After FREE_READS reads of a
# job's output each further one waits READ_PACE first, so the pipe gathers up to 64 KiB per wake-up.
FREE_READS, READ_PACE = 64, 0.005
UNSAFE_HINT = ("set rl.unsafe_code_sandbox=true to run generated code without isolation "
               "(only for code you trust: it can then read and write what the trainer's user can)")
NO_OPT_OUT_HINT = ("this command has no way to run it without isolation: run it where user namespaces are "
                   "allowed (README: Code-reward sandbox)")


class SandboxUnavailable(R1MegaError, RuntimeError):
    """Strong isolation cannot be set up on this machine and the run did not opt out of it (a user
    error: commands print it as one `error:` line and exit 2)."""


@dataclass
class Limits:
    wall_seconds: float = 5.0
    cpu_seconds: int = 4
    memory_bytes: int = 512 * 2 ** 20  # address space per process
    memory_total_bytes: int = 2 * 2 ** 30  # all of a program's processes (a memory cgroup; else processes drop to total / per process)
    disk_bytes: int = 16 * 2 ** 20  # the writable tmpfs at /tmp, shared by all its processes
    file_bytes: int = 4 * 2 ** 20  # one file
    processes: int = 40  # tasks (processes and threads) of the program, its main one included
    pending_signals: int = 64  # signals it may keep queued (RLIMIT_SIGPENDING)
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
    tests: Optional[str] = None  # Python run after the code (asserts); then check(entry_point) if given
    limits: Limits = field(default_factory=Limits)
    entry_point: Optional[str] = None
    # judged: the tests run in a separate interpreter that never held the program's code, calling
    # its functions through plain data (r1mega.sandbox.code_tests); else in the program's namespace
    judged: bool = False


JUDGE_LIMITS = Limits(memory_bytes=512 * 2 ** 20, processes=4, output_bytes=4096)


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


def require_isolation(hint: str = UNSAFE_HINT) -> bool:
    """True where the isolated sandbox runs; else raise SandboxUnavailable with the reason, or,
    with allow_unsafe(True), warn and return False (programs then run without isolation). `hint`:
    what the user can do (GRPO's opt-out key; NO_OPT_OUT_HINT for commands without one)."""
    problem = isolation_problem()
    if problem is None:
        return True
    if not _policy["unsafe"]:
        raise SandboxUnavailable(f"refusing to run generated code: {problem}; {hint}")
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
    """Two programs per CPU: much of a program's setup waits on the kernel (namespaces, RCU), not
    on a CPU, and a judged program is two processes that take turns."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, 2 * cpus)


def run_many(jobs: list[Job], workers: Optional[int] = None, groups: Optional[list] = None,
             passed=None) -> list[SandboxResult]:
    """Run jobs concurrently (one sandbox each; threads only wait on pipes), results in order.

    groups: per job, the groups (hashable ids) it belongs to, e.g. the stdin/stdout cases of one program,
    which pass only together. Once a job fails -- passed(index, result) is False; default: not
    result.ok -- its groups have failed: their jobs not yet started are not run and those running are
    stopped (a job shared with a group still alive runs on), each with the reason NOT_RUN. So a program
    that loops costs one case's limits, not every case's."""
    if not jobs:
        return []
    isolate = require_isolation()
    one = (lambda i: _one(jobs[i], isolate)) if groups is None else _grouped(jobs, isolate, groups, passed)
    with ThreadPoolExecutor(max_workers=min(len(jobs), workers or default_workers())) as pool:
        return list(pool.map(one, range(len(jobs))))


NOT_RUN = "not run to the end: another case of this program failed"


def _one(job: Job, isolate: bool, stop: Optional[int] = None) -> SandboxResult:
    if job.judged and job.tests is not None:
        return _judged(job, isolate)
    return _run(job, isolate, stop=stop)


def _grouped(jobs: list[Job], isolate: bool, groups: list, passed):
    """run_many's job runner when jobs come in groups that fail together (see run_many)."""
    passed = passed or (lambda i, res: res.ok)
    lock, failed, stops = threading.Lock(), set(), {}  # stops: group -> write ends of its running jobs' stop pipes
    of = [frozenset(g) for g in groups]

    def dead(i: int) -> bool:
        return bool(of[i]) and of[i] <= failed

    def one(i: int) -> SandboxResult:
        with lock:
            if dead(i):
                return SandboxResult(False, NOT_RUN, -1, "", "")
            stop_r, stop_w = os.pipe()
            for g in of[i]:
                stops.setdefault(g, {})[stop_w] = i
        try:
            res = _one(jobs[i], isolate, stop=stop_r)
        finally:
            with lock:
                for g in of[i]:
                    stops[g].pop(stop_w, None)
                os.close(stop_w)
            os.close(stop_r)
        if res.reason == "judged":  # stopped through its stop pipe
            return replace(res, reason=NOT_RUN)
        if not passed(i, res):
            with lock:
                failed.update(of[i])
                for g in of[i]:
                    for w, j in stops.get(g, {}).items():
                        if dead(j):
                            os.write(w, b"x")
        return res
    return one


def judge(code: str, tests: str, entry_point: Optional[str] = None, limits: Limits = Limits()) -> SandboxResult:
    """Run `code` and judge it by `tests` where it cannot change what they mean (see _judged)."""
    return run_many([Job(code, tests=tests, limits=limits, entry_point=entry_point, judged=True)])[0]


def _judged(job: Job, isolate: bool) -> SandboxResult:
    """The program runs in its sandbox and serves its functions; the tests run in a second
    interpreter (forked from the zygote, never holding the program's code), where the program's
    names are proxies that pass plain arguments over a socket and get plain values back (and the
    tests' callables are called back there). Tests that pass the program an object of a class of
    their own cannot be judged apart and fail by name: in the program's interpreter a program can
    forge any verdict (patch the harness's builtins, read the token from its frame)."""
    plan = code_tests.plan(job.tests, job.entry_point)
    if isinstance(plan, str):
        return SandboxResult(False, f"tests unusable: {plan}", -1, "", "")
    res = _run_pair(job, plan, isolate)
    if res is not None:
        return res
    return SandboxResult(False, IN_PROCESS_ONLY, -1, "", "")


IN_PROCESS_ONLY = ("tests unusable: they pass the program an object of a class of their own, which cannot cross "
                   "to it as plain data (judged in the program's interpreter it could forge the verdict)")


def _run_pair(job: Job, plan: "code_tests.Plan", isolate: bool) -> Optional[SandboxResult]:
    with _Zygote.lease() as zygote:  # the judge shares the program's memory cgroup
        return _run_pair_on(job, plan, isolate, zygote)


def _run_pair_on(job: Job, plan: "code_tests.Plan", isolate: bool, zygote: _Zygote) -> Optional[SandboxResult]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stop_r, stop_w = os.pipe()
    box = {}

    def program() -> None:
        box["res"] = _run(Job(job.code, limits=job.limits), isolate, rpc=theirs.detach(), stop=stop_r, zygote=zygote)

    t = threading.Thread(target=program, daemon=True)
    t.start()
    lim = replace(JUDGE_LIMITS, wall_seconds=job.limits.wall_seconds + 1.0, cpu_seconds=job.limits.cpu_seconds + 1)
    verdict, err = _run_judge({"proxies": plan.proxies, "aliases": plan.aliases, "modules": plan.modules,
                               "tests": plan.script}, lim,
                              mine.detach(), zygote)
    os.write(stop_w, b"x")  # the verdict is in: the program has nothing more to do
    t.join()
    os.close(stop_r)
    os.close(stop_w)
    pres = box["res"]
    if verdict == "in-process":
        return None
    if verdict == "ok":
        return SandboxResult(True, "ok", 0, pres.stdout, pres.stderr)
    last = err.strip().splitlines()[-1] if err.strip() else verdict
    reason = f"error: {last}" if verdict == "fail" else f"judge: {verdict}"
    if "the program did not load" in err or pres.reason.startswith("sandbox setup failed"):
        reason = pres.reason if not pres.ok and pres.reason != "judged" else "the program ended before the tests"
    elif not pres.ok and pres.reason not in ("judged", "ok") and not pres.reason.startswith("error:"):
        reason = pres.reason  # e.g. its wall-clock or memory limit stopped a call
    return SandboxResult(False, reason, pres.returncode, pres.stdout, pres.stderr + err)


def _run_judge(judge_job: dict, lim: Limits, rpc: int, zygote: _Zygote) -> tuple[str, str]:
    """The tests in a judge process forked straight from the zygote (sandbox_init.judge_process);
    (verdict, its stderr). It ends itself at the wall limit (SIGALRM); this waits a little longer."""
    payload = json.dumps({"judge": judge_job, "limits": asdict(lim), "seccomp": _filter_b64()}).encode()
    (job_r, job_w), (err_r, err_w), (v_r, v_w) = os.pipe(), os.pipe(), os.pipe()
    theirs = [job_r, err_w, v_w, rpc]
    try:
        zygote.submit(theirs, b"judge")
    except OSError as e:
        for fd in (job_w, err_r, v_r):
            os.close(fd)
        return f"could not reach the sandbox zygote: {e}", ""
    finally:
        for fd in theirs:
            os.close(fd)
    bufs = {err_r: bytearray(), v_r: bytearray()}
    caps = {err_r: lim.stderr_bytes, v_r: 8192}
    sel = selectors.DefaultSelector()
    os.set_blocking(job_w, False)
    sel.register(job_w, selectors.EVENT_WRITE)
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    view, deadline = memoryview(payload), time.monotonic() + lim.wall_seconds + SETUP_GRACE
    try:
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                if key.fd == job_w:
                    try:
                        view = view[os.write(job_w, view[:65536]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        view = view[:0]
                    if not view:
                        sel.unregister(job_w)
                        os.close(job_w)
                        job_w = -1
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                bufs[key.fd] += chunk[:max(0, caps[key.fd] - len(bufs[key.fd]))]
    finally:
        sel.close()
        for fd in (job_w, err_r, v_r):
            if fd >= 0:
                os.close(fd)
    verdict = bytes(bufs[v_r]).decode(errors="replace") or "the judge ended without a verdict (wall-clock or CPU limit)"
    return verdict, bytes(bufs[err_r]).decode(errors="replace")


# ---------------------------------------------------------------- one program


class _Zygote:
    """A forker of supervisors (sandbox_init.zygote), started on first use. One per program
    running at once (leased): each lives in a memory cgroup of its own where one can be made, so
    its forks are born in it and no program pays for a cgroup migration."""

    _lock = threading.Lock()
    _idle: list["_Zygote"] = []
    _all: list["_Zygote"] = []

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

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    @classmethod
    @contextmanager
    def lease(cls) -> Iterator["_Zygote"]:
        with cls._lock:
            z = None
            while z is None and cls._idle:
                c = cls._idle.pop()
                z = c if c.alive() else None
            if z is None:  # first use, more programs at once than before, a forked trainer, a dead zygote
                z = _Zygote()
                cls._all.append(z)
        try:
            yield z
        finally:
            with cls._lock:
                if z.alive():
                    cls._idle.append(z)

    def submit(self, fds: list[int], kind: bytes = b"job") -> None:
        socket.send_fds(self.sock, [kind], fds)


@atexit.register
def _stop_zygotes() -> None:
    """Each zygote leaves when its socket closes; then its memory and CPU cgroups (named by its pid) go."""
    mine = [z for z in _Zygote._all if z.owner == os.getpid()]
    for z in mine:
        z.sock.close()
    parents = None
    for z in mine:
        try:
            z.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            continue
        if parents is None:
            from r1mega.sandbox.sandbox_init import find_cgroup

            parents = {found[0] for found in map(find_cgroup, ("memory", "cpu")) if found}
        for parent in parents:
            try:
                os.rmdir(f"{parent}/r1mega-zygote-{z.proc.pid}")
            except OSError:
                pass


def _run(job: Job, isolate: bool, rpc: Optional[int] = None, stop: Optional[int] = None,
         extra: Optional[dict] = None, zygote: Optional[_Zygote] = None) -> SandboxResult:
    """One sandboxed program. rpc: a socket fd handed to it (and closed here); stop: an fd whose
    becoming readable ends it early (the judge has its verdict); zygote: the one leased for it."""
    if zygote is None:
        with _Zygote.lease() as z:
            return _run(job, isolate, rpc, stop, extra, z)
    lim = job.limits
    token = "r1mega-sandbox-done-" + secrets.token_hex(16)
    payload = json.dumps({
        "code": job.code, "tests": _with_entry_point(job), "stdin": job.stdin, "token": token,
        "isolate": isolate, "limits": asdict(lim), "seccomp": _filter_b64(), **(extra or {}),
    }).encode()
    (job_r, job_w), (out_r, out_w), (err_r, err_w), (st_r, st_w) = (os.pipe() for _ in range(4))
    theirs, mine = [job_r, out_w, err_w, st_w], [job_w, out_r, err_r, st_r]  # job pipe: job, then abort
    try:
        zygote.submit(theirs + ([rpc] if rpc is not None else []))
    except OSError as e:
        for fd in mine:
            os.close(fd)
        return SandboxResult(False, f"sandbox setup failed: could not reach the sandbox zygote: {e}", -1, "", "")
    finally:
        for fd in theirs + ([rpc] if rpc is not None else []):
            os.close(fd)
    out, err, status, killed = _exchange(mine, len(payload).to_bytes(8, "little") + payload, lim, stop)
    return _result(out, err, status, killed, token, lim)


def _with_entry_point(job: Job) -> Optional[str]:
    if job.tests is None or not job.entry_point or job.judged:
        return job.tests
    return f"{job.tests}\n\ncheck({job.entry_point})\n"


@functools.lru_cache(maxsize=None)
def _filter_b64() -> str:
    return base64.b64encode(seccomp.build_filter()).decode()


def _exchange(fds: list[int], payload: bytes, lim: Limits, stop: Optional[int] = None):
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
    if stop is not None:
        sel.register(stop, selectors.EVENT_READ)
    view, killed, aborted, reads = memoryview(payload), None, False, 0
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
        while any(key.fd != stop for key in sel.get_map().values()):
            left = deadline - time.monotonic()
            if left <= 0:
                if aborted:  # aborted and still no EOF: stop waiting
                    break
                abort("timeout")
                continue
            for key, _ in sel.select(timeout=left):
                fd = key.fd
                if fd == stop:
                    sel.unregister(fd)
                    abort("judged")
                    continue
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
                reads += 1
                if reads > FREE_READS:
                    time.sleep(READ_PACE)
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
    if killed == "judged":
        return SandboxResult(False, "judged", code, stdout, stderr)
    if st.get("oom_kills") and not (finished and code == 0):
        return SandboxResult(False, f"memory limit ({lim.memory_total_bytes // 2 ** 20} MiB over all its processes)",
                             code, stdout, stderr)
    if killed == "timeout" or st.get("timeout") and code == -signal.SIGKILL:  # else it ended on its own just then
        return SandboxResult(False, f"wall-clock timeout after {lim.wall_seconds:g} s", code, stdout, stderr)
    if setup is None:
        return SandboxResult(False, "sandbox supervisor died without a status", code, stdout, stderr)
    if finished and code == 0:
        return SandboxResult(True, "ok", 0, stdout, stderr)
    return SandboxResult(False, _reason(code, stderr, float(st.get("cpu", 0.0)), lim), code, stdout, stderr)


def _reason(code: int, err: str, cpu: float, lim: Limits) -> str:
    if code in (-signal.SIGKILL, -signal.SIGXCPU) and cpu >= 0.8 * lim.cpu_seconds:  # the kernel's CPU clock is tick-sampled
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
