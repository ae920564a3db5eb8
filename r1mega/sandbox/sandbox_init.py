"""The sandbox's supervisor and init (stdlib only). r1mega.sandbox.isolation starts this file once per
trainer process as a zygote (`python -I -S -B -X utf8 sandbox_init.py <control fd>`, empty
environment); for each job it receives the job's pipes over the control socket and forks:

  supervisor (`supervise`, outside the new PID namespace; trusted)
    enters new user/mount/network/IPC/UTS/cgroup namespaces, builds a fresh root there
    (read-only binds of the stdlib and of the loaded shared libraries' directories, /dev/null &
    co., a size-capped tmpfs at /tmp; no /proc, /etc, site-packages), pivots into it, becomes an
    unprivileged uid and forks
  init (PID 1 of a new PID namespace)
    sets rlimits, drops every capability, sets no_new_privs and the seccomp filter, then runs the
    program and, only after the program (and its tests) finished, prints the job's random token
    as its last line.
When init exits or is killed, the kernel kills every process left in its PID namespace; init
dies with the supervisor (PR_SET_PDEATHSIG, which the seccomp filter stops it from clearing), and
the supervisor kills init at the wall-clock limit or when the trainer closes the job pipe. The
supervisor reports on a status pipe the program never holds.
"""
import base64
import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import sys
import time
from decimal import Decimal as _Decimal
from fractions import Fraction as _Fraction

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 4, 22, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYSTEM_LIB_LINKS = ("/lib", "/lib64", "/lib32", "/libx32")
DEVICES = ("null", "zero", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {src} on {target}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------- supervisor: the root and namespaces


def enter_sandbox(disk_bytes: int) -> None:
    """Enter new user/mount/net/IPC/UTS/cgroup namespaces (and a PID namespace for the next
    child), build the sandbox's root in them, and become an unprivileged uid.

    As root, the sandbox's uid is nobody: a helper forked beforehand (still root outside, so
    allowed to) maps nobody to nobody, and the root is built before the switch (root still owns
    /root, where the stdlib may live, e.g. /root/.pyenv). Where nobody does not exist (a rootless
    container mapping only its root), nobody inside is mapped onto the caller. Otherwise the
    caller's own uid is the only one mapped. Needs no capability outside the new user namespace;
    uid 0 never exists inside."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    flags |= CLONE_NEWCGROUP if os.path.exists("/proc/self/ns/cgroup") else 0
    what = "unshare(user, mount, net, ipc, uts, pid namespaces)"
    root = os.geteuid() == 0
    if root and _setgroups_allowed():
        os.setgroups([])  # root's supplementary groups must not follow into the sandbox
    if root and _mapped("uid", NOBODY) and _mapped("gid", NOBODY):
        uid = gid = NOBODY
        _map_nobody_with_helper(flags, what)
    else:
        outer_uid, outer_gid = os.geteuid(), os.getegid()
        uid, gid = (NOBODY, NOBODY) if root else (outer_uid, outer_gid)
        _check(libc.unshare(flags), what)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {outer_uid} 1")
        _write("/proc/self/gid_map", f"{gid} {outer_gid} 1")
    _check(libc.sethostname(b"sandbox", 7), "sethostname")  # not the host's name
    build_root(uid, gid, disk_bytes)


def _setgroups_allowed() -> bool:  # "deny" in a user namespace set up that way (then groups are fixed)
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def _mapped(kind: str, ident: int) -> bool:
    """Whether id exists in this process's user namespace (per /proc/self/{uid,gid}_map)."""
    with open(f"/proc/self/{kind}_map") as f:
        for line in f:
            first, _, count = map(int, line.split())
            if first <= ident < first + count:
                return True
    return False


def _map_nobody_with_helper(flags: int, what: str) -> None:
    me = os.open(f"/proc/{os.getpid()}", os.O_PATH | os.O_DIRECTORY)
    go_r, go_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # stays root in the host's namespaces: may map nobody for its parent
        os.close(go_w)
        code = 1
        try:
            if os.read(go_r, 1) == b"u":
                for name, text in (("setgroups", "deny"), ("uid_map", f"{NOBODY} {NOBODY} 1"),
                                   ("gid_map", f"{NOBODY} {NOBODY} 1")):
                    fd = os.open(name, os.O_WRONLY, dir_fd=me)
                    os.write(fd, text.encode())
                    os.close(fd)
                code = 0
        except OSError as e:
            sys.stderr.write(f"sandbox-setup: writing the id maps: {e}\n")
        os._exit(code)
    os.close(go_r)
    os.close(me)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        os.close(go_w)  # the helper reads EOF and leaves
        os.waitpid(helper, 0)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    os.write(go_w, b"u")
    os.close(go_w)
    _, status = os.waitpid(helper, 0)
    if status != 0:
        raise OSError("could not write the sandbox's uid/gid maps")


def drop_to_nobody() -> None:  # the unsafe mode's only identity change
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)


def _bind_ro(src_fd: int, target: str, device: bool = False) -> None:
    _mount(f"/proc/self/fd/{src_fd}", target, None, MS_BIND)
    st = os.statvfs(target)
    keep = 0  # flags the kernel locks on mounts inherited into a user namespace must be restated
    for f_flag, ms in ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                       (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME),
                       (os.ST_NODEV, MS_NODEV)):
        keep |= ms if st.f_flag & f_flag else 0
    if not st.f_flag & (os.ST_NOATIME | os.ST_RELATIME):
        keep |= MS_STRICTATIME
    extra = MS_NOEXEC if device else MS_NODEV
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | extra | keep)


def _visible_paths() -> list[str]:
    """The host paths the program may read, nothing else: the directories of the shared objects
    this interpreter has loaded (so extension modules find their .so dependencies next to libc),
    the interpreter's stdlib directories, and the top-level /lib* symlinks of merged-/usr systems."""
    dirs = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and ".so" in os.path.basename(path):
                d = os.path.dirname(path)
                dirs += [d, "/usr" + d] if d.startswith("/lib") else [d]
    dirs += [os.path.abspath(p) for p in sys.path if p]
    paths = [p for p in SYSTEM_LIB_LINKS if os.path.islink(p)]
    for p in sorted(set(dirs), key=len):
        if os.path.isdir(p) and not os.path.islink(p) and not any(p == q or p.startswith(q + "/") for q in paths):
            paths.append(p)
    return paths


def build_root(uid: int, gid: int, disk_bytes: int) -> None:
    """A fresh tmpfs root with read-only binds, device nodes and a writable /tmp, pivoted into;
    the host's root is detached. Runs in the new mount namespace; what it shows is opened first
    (as the caller), then the identity becomes uid/gid for good and the rest is built as them."""
    sources = {}  # opened before /tmp is covered, in case a path lives under it
    for p in _visible_paths():
        sources[p] = os.readlink(p) if os.path.islink(p) else os.open(p, os.O_PATH | os.O_DIRECTORY)
    devices = {d: os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES if os.path.exists(f"/dev/{d}")}
    os.setresgid(gid, gid, gid)  # from here on the only ids that exist inside (capabilities stay)
    os.setresuid(uid, uid, uid)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = "/tmp"
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for p, src in sorted(sources.items(), key=lambda kv: len(kv[0])):
        target = root + p
        if isinstance(src, str):  # e.g. /lib -> usr/lib on merged-/usr systems
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(src, target)
            continue
        os.makedirs(target, exist_ok=True)
        _bind_ro(src, target)
        os.close(src)
        for sub in ("", "/python3", f"/python{sys.version_info[0]}.{sys.version_info[1]}"):
            for name in ("site-packages", "dist-packages"):  # installed packages: not needed, not shown
                if os.path.isdir(f"{target}{sub}/{name}"):
                    _mount("tmpfs", f"{target}{sub}/{name}", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           "size=4k,nr_inodes=1,mode=0555")
    os.mkdir(root + "/dev")
    for d, fd in devices.items():
        open(f"{root}/dev/{d}", "w").close()
        _bind_ro(fd, f"{root}/dev/{d}", device=True)
        os.close(fd)
    os.mkdir(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={int(disk_bytes)},nr_inodes=1024,mode=0700,uid={uid},gid={gid}")
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ---------------------------------------------------------------- init: drop everything


def set_limits(lim: dict) -> None:
    stack = resource.getrlimit(resource.RLIMIT_STACK)[1]
    stack = 64 << 20 if stack == resource.RLIM_INFINITY else min(stack, 64 << 20)
    for res, value in ((resource.RLIMIT_AS, lim["memory_bytes"]), (resource.RLIMIT_FSIZE, lim["file_bytes"]),
                       (resource.RLIMIT_NPROC, lim["processes"]), (resource.RLIMIT_NOFILE, lim["open_files"]),
                       (resource.RLIMIT_CORE, 0), (resource.RLIMIT_MEMLOCK, 0), (resource.RLIMIT_STACK, stack),
                       (resource.RLIMIT_MSGQUEUE, 0), (resource.RLIMIT_RTPRIO, 0), (resource.RLIMIT_NICE, 0)):
        hard = resource.getrlimit(res)[1]
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(res, (value, value))
    cpu = int(lim["cpu_seconds"])
    # init of a PID namespace ignores SIGXCPU; the hard limit's SIGKILL always lands
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


def drop_capabilities() -> None:
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            _check(-1, f"dropping capability {cap} from the bounding set")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words: all empty
    _check(libc.capset(header, data), "capset (drop all capabilities)")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(program: bytes) -> None:
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "installing the seccomp filter")


def _sealed(data: bytes, cloexec: bool) -> int:
    """A read-only in-memory file holding data (sealed: nobody can change it afterwards)."""
    fd = os.memfd_create("data", (os.MFD_CLOEXEC if cloexec else 0) | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def stdin_from(data: bytes) -> None:
    """The program's stdin: a sealed in-memory file (no pipe to fill, nothing written to disk)."""
    fd = _sealed(data, cloexec=True)
    os.dup2(fd, 0)  # dup2 clears close-on-exec on fd 0
    os.close(fd)


# ---------------------------------------------------------------- init: run the program


VALUES_PREFIX = "r1mega-values:"
MAX_DEPTH = 100  # as r1mega.sandbox.code_tests.MAX_DEPTH


def encode_value(v, depth: int = 0):
    """A returned value in the wire format r1mega.sandbox.code_tests.decode reads: plain data only.
    Subclasses of the builtin types (Counter, defaultdict, namedtuple, IntEnum) are read through
    their base type's own C methods, so what travels is the data they hold, never the result of
    an override (__eq__, __iter__, __repr__); Fraction and Decimal travel as numbers. Nothing here
    is a security boundary (the program may print any values line it likes): it only carries honest
    values faithfully; the trainer never sees the expected values leave its side."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None or t is bool:
        return v
    if isinstance(v, int):
        return ["i", str(int.__index__(v))]
    if isinstance(v, float):
        return ["f", repr(float.__float__(v))]
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, complex):
        return ["c", repr(complex.real.__get__(v)), repr(complex.imag.__get__(v))]
    if isinstance(v, bytes):
        return ["b", bytes.hex(v)]
    if isinstance(v, _Fraction):
        return ["q", str(_FRACTION_NUM.__get__(v)), str(_FRACTION_DEN.__get__(v))]
    if isinstance(v, _Decimal):
        return ["D", _Decimal.__str__(v)]
    if isinstance(v, dict):
        return ["d", [[encode_value(k, depth + 1), encode_value(i, depth + 1)] for k, i in dict.items(dict.copy(v))]]
    for typ, tag, plain in _CONTAINERS:
        if isinstance(v, typ):
            return [tag, [encode_value(i, depth + 1) for i in plain(v)]]
    raise TypeError(f"a {t.__name__} is not a plain value (int, float, str, bytes, bool, None, list, tuple, "
                    "dict, set, Fraction, Decimal or a subclass)")


_CONTAINERS = ((list, "l", list.copy), (tuple, "t", lambda v: tuple.__getitem__(v, slice(None))),
               (set, "s", set.copy), (frozenset, "fs", frozenset.copy),
               (type({}.keys()), "s", set), (type({}.items()), "s", set))  # views compare like sets
_FRACTION_NUM, _FRACTION_DEN = _Fraction.__dict__["_numerator"], _Fraction.__dict__["_denominator"]


def _call_values(calls: dict, glb: dict) -> str:
    """Evaluates each program-side expression; the expected values are not here (the trainer has them)."""
    exec(compile(calls["setup"], "tests.py", "exec"), glb)
    names = {name: glb[target] for name, target in calls["bind"].items() if target in glb}
    values = []
    for expr in calls["exprs"]:
        try:  # bound names as globals, so comprehensions inside the expression see them too
            values.append({"v": encode_value(eval(compile(expr, "tests.py", "eval"), {**glb, **names}))})
        except BaseException as e:  # noqa: BLE001 - SystemExit too: a failed check, not the end
            values.append({"e": type(e).__name__})
    return VALUES_PREFIX + json.dumps(values, separators=(",", ":"))


def run_program(code: str, tests, calls, token_fd: int) -> None:
    """Runs the program, then its tests (asserts run here) or its calls (values sent to the trainer,
    which judges them); the token goes out only if all of that completed. With neither (stdio) a
    clean sys.exit(0) ends the program normally; otherwise any exit is a failure. The token is read
    from its sealed memfd only at the end, so no Python object holds it while the program runs (a
    program that hunts for that fd can still find it: see the README)."""
    stdio = tests is None and calls is None
    glb = {"__name__": "__main__", "__builtins__": __builtins__}
    sys.argv = ["solution.py"]
    ok, tail = False, ""
    try:
        exec(compile(code, "solution.py", "exec"), glb)
        if tests is not None:
            exec(compile(tests, "tests.py", "exec"), glb)
        if calls is not None:
            tail = _call_values(calls, glb) + "\n"
        ok = True
    except SystemExit as e:
        ok = stdio and e.code in (None, 0)
        if not ok:
            sys.stderr.write(f"SystemExit({e.code!r}) before the {'tests finished' if not stdio else 'end'}\n")
    except BaseException:
        import traceback

        traceback.print_exc()
    try:
        sys.stdout.flush()
    except BaseException:
        ok = False
    if ok:
        out = ("\n" + tail).encode() + os.pread(token_fd, 256, 0) + b"\n"
        while out:
            out = out[os.write(1, out):]
    os._exit(0 if ok else 1)


def init(job: dict, report_w: int, alive_r: int) -> None:
    """PID 1 of the sandbox: confine this process, report 'ok' to the supervisor, run the job."""
    isolate = job["isolate"]
    try:
        if isolate:
            _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
            if select.select([alive_r], [], [], 0)[0]:  # the supervisor already died
                os._exit(1)
            os.chdir("/tmp")
        else:
            os.setsid()  # the unsafe mode kills a process group: the best it can do
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.chdir(job["workdir"])
        os.closerange(3, report_w)
        os.closerange(report_w + 1, 1 << 16)
        stdin_from(job["stdin"].encode())
        token_fd = _sealed(job.pop("token").encode(), cloexec=True)  # out of the job dict the callers hold
        os.environ.clear()
        os.environ.update({"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
        set_limits(job["limits"])
        if isolate:
            drop_capabilities()
        install_seccomp(base64.b64decode(job["seccomp"]))
    except BaseException as e:
        os.write(report_w, f"{type(e).__name__}: {e}".encode()[:4000])
        os._exit(71)
    os.write(report_w, b"ok")
    os.close(report_w)
    code, tests, calls = job["code"], job["tests"], job.get("calls")
    del job
    run_program(code, tests, calls, token_fd)


# ---------------------------------------------------------------- supervisor


def _read_exactly(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the trainer closed the job pipe early")
        buf += chunk
    return bytes(buf)


def supervise(status_fd: int) -> None:
    """One job: fd 0 brings an 8-byte length and the JSON job, then stays open as the abort
    channel (EOF: the trainer gave up or died: kill the program now); fds 1/2 are the program's
    stdout/stderr; `status_fd` gets this supervisor's verdict as JSON."""
    status = os.fdopen(status_fd, "w")

    def report(**kw) -> None:
        status.write(json.dumps(kw))
        status.flush()

    job = json.loads(_read_exactly(0, int.from_bytes(_read_exactly(0, 8), "little")))
    workdir = None
    try:
        if job["isolate"]:
            enter_sandbox(job["limits"]["disk_bytes"])
        else:
            import tempfile

            job["workdir"] = workdir = tempfile.mkdtemp(prefix="r1mega-unsafe-sandbox-")
            if os.geteuid() == 0:
                os.chown(workdir, NOBODY, NOBODY)
            drop_to_nobody()
    except Exception as e:  # noqa: BLE001 - any failure to confine is reported, never run past
        report(setup=f"{type(e).__name__}: {e}")
        return
    report_r, report_w = os.pipe()
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status.close()
        os.close(report_r)
        os.close(alive_w)
        init(job, report_w, alive_r)
        os._exit(70)  # not reached
    os.close(report_w)
    os.close(alive_r)
    ready = select.select([report_r], [], [], 30.0)[0]  # setup is trusted code: bounded all the same
    msg = os.read(report_r, 4096).decode(errors="replace") if ready else "setup did not finish in 30 s"
    os.close(report_r)
    if msg != "ok":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        report(setup=msg or "init died during setup")
        return
    deadline = time.monotonic() + float(job["limits"]["wall_seconds"])
    pidfd = os.pidfd_open(pid)
    ready = select.select([pidfd, 0], [], [], max(0.0, deadline - time.monotonic()))[0]
    aborted, timed_out = 0 in ready and pidfd not in ready, not ready
    if aborted or timed_out:
        os.kill(pid, signal.SIGKILL)  # init's death takes its whole PID namespace with it
    if not job["isolate"]:
        try:  # the unsafe mode: the program's process group, as far as it stayed in it
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, st, usage = os.wait4(pid, 0)
    if workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    report(setup="ok", timeout=timed_out, aborted=aborted, exit=os.waitstatus_to_exitcode(st),
           cpu=usage.ru_utime + usage.ru_stime)


def zygote(control_fd: int) -> None:
    """Forks one supervisor per job received on the control socket (the fds of its pipes come
    with the message), so no job pays for an interpreter's start-up or a fork of the trainer.
    Holds no job data itself; exits when the trainer closes the socket."""
    import socket

    for name in PRELOAD:  # shared by every program through fork
        try:
            __import__(name)
        except ImportError:
            pass
    sock = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 4)
        except InterruptedError:
            continue
        if not msg:
            return
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                for fd in fds[:3]:
                    if fd > 2:
                        os.close(fd)
                supervise(fds[3])
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)


PRELOAD = ("traceback", "collections", "itertools", "functools", "heapq", "bisect", "math", "string", "re",
           "random", "typing", "dataclasses", "fractions", "decimal", "statistics")

if __name__ == "__main__":
    zygote(int(sys.argv[1]))
