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

NOBODY = 65534
SANDBOX_ID_BASE = 1_800_000_000  # + the supervisor's pid (< 2**22): each sandbox's own uid/gid outside
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_SET_NAME = 1, 24, 38, 47, 15
PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_SET_CHILD_SUBREAPER = 4, 22, 2, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # the same on x86_64 and aarch64
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 1, 0o2000000, 4, -100
SYSTEM_LIB_LINKS = ("/lib", "/lib64", "/lib32", "/libx32")
DEVICES = ("null", "zero", "random", "urandom")
THREAD_STACK = 4 << 20
# A connection a listener has not accepted, and a datagram not yet received, keep what their
# senders wrote after those closed their sockets, so the queues' depths (4096 and 10 by default)
# bound memory that no rlimit and no open-file count sees: 400 closed connections held 88 MiB
# behind one listener with one fd open (outside every limit where no memory cgroup can be made)
SOCKET_QUEUES = {"/proc/sys/net/core/somaxconn": 4, "/proc/sys/net/unix/max_dgram_qlen": 4}
M_ARENA_MAX = -8  # mallopt(): how many malloc arenas threads may spread over

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _name(comm: bytes) -> None:  # what ps/top show for each role
    libc.prctl(PR_SET_NAME, comm, 0, 0, 0)


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

    As root, the sandbox's uid is nobody inside, mapped onto a uid of its own outside
    (SANDBOX_ID_BASE + the supervisor's pid, unique among running sandboxes), which also owns
    the new user namespace: per-user kernel counts (processes, inotify instances, queued
    signals, locked memory) are then the sandbox's own, not the trainer's. A helper forked
    beforehand (still root outside) writes that map; what the root shows is opened first, as root
    (root may own /root, where the stdlib may live, e.g. /root/.pyenv). Where that uid is not
    mapped (a rootless container mapping only its root), nobody inside is mapped onto the caller.
    Otherwise the caller's own uid is the only one mapped. Needs no capability outside the new
    user namespace; uid 0 never exists inside."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    flags |= CLONE_NEWCGROUP if os.path.exists("/proc/self/ns/cgroup") else 0
    what = "unshare(user, mount, net, ipc, uts, pid namespaces)"
    root = os.geteuid() == 0
    if root and _setgroups_allowed():
        os.setgroups([])  # root's supplementary groups must not follow into the sandbox
    own = SANDBOX_ID_BASE + os.getpid()
    if root and all(_mapped(kind, i) for kind in ("uid", "gid") for i in (NOBODY, own)):
        uid = gid = NOBODY
        shown = open_sources(detached=True)  # as root, before giving root up
        _map_nobody_with_helper(flags, what, own)
    else:
        outer_uid, outer_gid = os.geteuid(), os.getegid()
        uid, gid = (NOBODY, NOBODY) if root else (outer_uid, outer_gid)
        _check(libc.unshare(flags), what)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {outer_uid} 1")
        _write("/proc/self/gid_map", f"{gid} {outer_gid} 1")
        shown = open_sources(detached=False)
    _check(libc.sethostname(b"sandbox", 7), "sethostname")  # not the host's name
    for path, depth in SOCKET_QUEUES.items():  # this network namespace's own settings
        try:
            _write(path, str(depth))
        except OSError:  # /proc/sys read-only (Docker): the memory cgroup, where there is one, still counts them
            pass
    build_root(uid, gid, disk_bytes, *shown)


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


def _map_nobody_with_helper(flags: int, what: str, outer: int) -> None:
    me = os.open(f"/proc/{os.getpid()}", os.O_PATH | os.O_DIRECTORY)
    go_r, go_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # stays root in the host's namespaces: may map nobody for its parent
        _name(b"r1m-idmap")
        os.close(go_w)
        code = 1
        try:
            if os.read(go_r, 1) == b"u":
                for name, text in (("setgroups", "deny"), ("uid_map", f"{NOBODY} {outer} 1"),
                                   ("gid_map", f"{NOBODY} {outer} 1")):
                    fd = os.open(name, os.O_WRONLY, dir_fd=me)
                    os.write(fd, text.encode())
                    os.close(fd)
                code = 0
        except OSError as e:
            sys.stderr.write(f"sandbox-setup: writing the id maps: {e}\n")
        os._exit(code)
    os.close(go_r)
    os.close(me)
    os.setresgid(outer, outer, outer)  # the namespace's owner: its kernel counts are charged to outer
    os.setresuid(outer, outer, outer)
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


def own_id() -> int:
    """The uid/gid for a process outside the namespaces (the unsafe mode's program, a judge): one
    of its own where this user namespace maps it, else nobody, else (no root) the caller's."""
    own = SANDBOX_ID_BASE + os.getpid()
    if os.geteuid() != 0:
        return os.geteuid()
    for ident in (own, NOBODY):
        if _setgroups_allowed() and _mapped("uid", ident) and _mapped("gid", ident):
            return ident
    return os.geteuid()


def drop_to(ident: int) -> None:  # the unsafe mode's (and the judge's) only identity change
    if os.geteuid() == 0 and ident != 0:
        os.setgroups([])
        os.setresgid(ident, ident, ident)
        os.setresuid(ident, ident, ident)


def _bind_ro(src_fd: int, target: str, device: bool = False, detached: bool = False) -> None:
    if detached:
        _check(libc.syscall(SYS_MOVE_MOUNT, src_fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
               f"move_mount onto {target}")
    else:
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


def open_sources(detached: bool) -> tuple[dict, dict, bool]:
    """What the sandbox's root shows, opened as the caller (before /tmp is covered, in case a
    path lives under it): the visible paths (or their link targets) and the device nodes. Detached:
    as copies of their mounts (open_tree), which a mount namespace made later may attach; else
    as O_PATH fds of this mount namespace, bound from /proc/self/fd."""
    def grab(path: str, directory: bool) -> int:
        if detached:
            fd = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
            if fd < 0:
                _check(-1, f"open_tree({path})")
            return fd
        return os.open(path, os.O_PATH | (os.O_DIRECTORY if directory else 0))

    sources = {p: os.readlink(p) if os.path.islink(p) else grab(p, True) for p in VISIBLE or _visible_paths()}
    devices = {d: grab(f"/dev/{d}", False) for d in DEVICES if os.path.exists(f"/dev/{d}")}
    return sources, devices, detached


def build_root(uid: int, gid: int, disk_bytes: int, sources: dict, devices: dict, detached: bool) -> None:
    """A fresh tmpfs root with read-only binds, device nodes and a writable /tmp, pivoted into;
    the host's root is detached. Runs in the new mount namespace; the identity becomes uid/gid
    for good first and the rest is built as them."""
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
        _bind_ro(src, target, detached=detached)
        os.close(src)
        for sub in ("", "/python3", f"/python{sys.version_info[0]}.{sys.version_info[1]}"):
            for name in ("site-packages", "dist-packages"):  # installed packages: not needed, not shown
                if os.path.isdir(f"{target}{sub}/{name}"):
                    _mount("tmpfs", f"{target}{sub}/{name}", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           "size=4k,nr_inodes=1,mode=0555")
    os.mkdir(root + "/dev")
    for d, fd in devices.items():
        open(f"{root}/dev/{d}", "w").close()
        _bind_ro(fd, f"{root}/dev/{d}", device=True, detached=detached)
        os.close(fd)
    os.symlink("/tmp", root + "/dev/shm")  # POSIX semaphores (multiprocessing's locks, Pool) live there, within /tmp's cap
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
    """Per-process rlimits. RLIMIT_NPROC counts the tasks (processes and threads) of the sandbox's
    uid, its supervisor included; RLIMIT_SIGPENDING bounds the signals it may keep queued."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[1]
    stack = 64 << 20 if stack == resource.RLIM_INFINITY else min(stack, 64 << 20)
    tasks = int(lim["processes"]) + 1
    for res, value in ((resource.RLIMIT_AS, lim["memory_bytes"]), (resource.RLIMIT_FSIZE, lim["file_bytes"]),
                       (resource.RLIMIT_NPROC, tasks), (resource.RLIMIT_NOFILE, lim["open_files"]),
                       (resource.RLIMIT_SIGPENDING, lim["pending_signals"]),
                       (resource.RLIMIT_CORE, 0), (resource.RLIMIT_MEMLOCK, 0), (resource.RLIMIT_STACK, stack),
                       (resource.RLIMIT_MSGQUEUE, 0), (resource.RLIMIT_RTPRIO, 0), (resource.RLIMIT_NICE, 0)):
        hard = resource.getrlimit(res)[1]
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(res, (value, value))
    cpu = int(lim["cpu_seconds"])
    # init of a PID namespace ignores SIGXCPU; the hard limit's SIGKILL always lands
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    import _thread

    # threads get THREAD_STACK, not the main thread's 64 MiB, so a default thread pool fits the address space
    _thread.stack_size(THREAD_STACK)
    # glibc gives each new thread that allocates an arena reserving 64 MiB of address space (up to
    # 8 per CPU): 20 threads would exhaust the cap above before their stacks do
    libc.mallopt(M_ARENA_MAX, 2)


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


def _load_wire():
    """r1mega/sandbox/wire.py, beside this file (-I keeps this directory off sys.path)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire.py")
    spec = importlib.util.spec_from_file_location("r1mega_sandbox_wire", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wire = _load_wire()
MAX_FRAME = 16 << 20  # one call or answer between a program and its judge
READY = "ready"


def _send(fd: int, text: str) -> None:
    data = text.encode()
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int):
    """One frame, or None at EOF or for a frame over MAX_FRAME."""
    def exactly(n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)
    head = exactly(8)
    if head is None or int.from_bytes(head, "little") > MAX_FRAME:
        return None
    body = exactly(int.from_bytes(head, "little"))
    return None if body is None else body.decode(errors="replace")


def _serve(glb: dict, rpc_fd: int) -> None:
    """The program's side of a judged run: call its functions on the judge's plain arguments and
    answer with plain values (or the name of the exception raised) until the judge hangs up."""
    _send(rpc_fd, READY)
    while True:
        req = _recv(rpc_fd)
        if req is None:
            return
        _send(rpc_fd, _answer(glb, req, rpc_fd))


def _answer(glb: dict, req: str, rpc_fd: int) -> str:
    """The program's answer to one call of the judge's."""
    try:
        call = json.loads(req)
        if call["f"] not in glb:
            raise NameError(call["f"])
        stub = _call_back_stub(glb, rpc_fd)
        args = [wire.decode(a, stub=stub) for a in call["a"]]
        kwargs = {k: wire.decode(v, stub=stub) for k, v in call["k"].items()}
        out = {"v": wire.encode(glb[call["f"]](*args, **kwargs))}
    except BaseException as e:  # noqa: BLE001 - SystemExit too: that call failed, nothing more
        out = {"e": _builtin_base(type(e))}
    try:
        return json.dumps(out, separators=(",", ":"))
    except BaseException as e:  # noqa: BLE001
        return json.dumps({"e": type(e).__name__})


def _call_back_stub(glb: dict, rpc_fd: int):
    """stub(index) for wire.decode: a callable of the program's process standing for the judge's
    callable `index` (a lambda or function the tests passed). Calling it sends plain arguments
    back to the judge, which runs its callable there, and waits for the plain result, answering
    the judge's own calls into the program meanwhile (the tests' callable may call the program)."""
    import builtins

    def stub(index: int):
        def call(*args, **kwargs):
            _send(rpc_fd, json.dumps({"cb": index, "a": [wire.encode(a) for a in args],
                                      "k": {k: wire.encode(v) for k, v in kwargs.items()}}, separators=(",", ":")))
            while True:
                msg = _recv(rpc_fd)
                if msg is None:
                    raise ConnectionError("the judge hung up")
                reply = json.loads(msg)
                if isinstance(reply, dict) and "f" in reply:
                    _send(rpc_fd, _answer(glb, msg, rpc_fd))
                    continue
                if isinstance(reply, dict) and "v" in reply:
                    return wire.decode(reply["v"], stub=stub)
                cls = getattr(builtins, str(reply.get("e")), None) if isinstance(reply, dict) else None
                if isinstance(cls, type) and issubclass(cls, Exception):
                    raise cls("raised by the tests' callable")
                raise RuntimeError("the tests' callable failed")
        return call
    return stub


def _builtin_base(cls) -> str:
    """The name of the nearest builtin exception class an exception's class derives from (so a
    program's `class NotFound(KeyError)` reaches the tests as a KeyError)."""
    import builtins

    for base in getattr(cls, "__mro__", ()):
        if getattr(builtins, getattr(base, "__name__", ""), None) is base:
            return base.__name__
    return "Exception"


class ProgramError(Exception):
    """Raised in the judge for an exception the program raised that is not a builtin one."""


class ProgramGone(BaseException):
    """The program ended, failed to load, or answered with something that is not plain data."""


class NeedsInProcess(BaseException):
    """The tests passed the program something that is not plain data (a lambda, their own class)."""


def _program_exception(name) -> BaseException:
    import builtins

    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if cls in (StopIteration, StopAsyncIteration):  # would end the tests' map()/zip()/next() early (cf. PEP 479)
        return RuntimeError(f"raised by the program ({name})")
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(f"raised by the program ({name})")
    return ProgramError(str(name))


def _tests_own(value) -> bool:
    """Whether a value that cannot cross is one the tests made themselves: a function, lambda,
    class or other callable (not a method bound to a plain value), or an object of a class they
    define (callables cross as call-backs, so in practice the latter). No answer of the program
    decodes to one of those, so only then is the verdict "in-process" (tests that cannot be judged
    apart: they fail by name); anything derived from the program's answers fails as a TypeError."""
    import types

    if isinstance(value, (types.BuiltinMethodType, types.MethodWrapperType)):
        owner = value.__self__
        return owner is None or isinstance(owner, types.ModuleType) or type(owner).__module__ == "__main__"
    return value is not None and (callable(value) or type(value).__module__ == "__main__")


def _proxy(name: str, rpc_fd: int, state: dict):
    """Stands for the program's function `name` in the judge's interpreter."""
    fns = state.setdefault("fns", [])  # the tests' callables the program holds stubs of

    def call(*args, **kwargs):
        if state["gone"]:
            raise ProgramGone(name)
        try:
            known = len(fns)
            req = json.dumps({"f": name, "a": [wire.encode(a, fns=fns) for a in args],
                              "k": {k: wire.encode(v, fns=fns) for k, v in kwargs.items()}}, separators=(",", ":"))
            _refuse_powerful(fns, known)
        except wire.NotPlain as e:
            if not _tests_own(e.value):  # over a cap, a dict view ...: what the program returned may cause it
                raise TypeError(f"an argument of {name} cannot cross to the program: {e}") from None
            state["in_process"] = True
            raise NeedsInProcess(name) from None
        err = None
        try:
            _send(rpc_fd, req)
            while True:
                resp = _recv(rpc_fd)
                resp = json.loads(resp) if resp is not None else None
                if not (isinstance(resp, dict) and "cb" in resp):
                    break
                _send(rpc_fd, _run_call_back(resp, fns))  # the program calls one of the tests' callables
            if isinstance(resp, dict) and "v" in resp:
                return wire.decode(resp["v"])
            if isinstance(resp, dict) and "e" in resp:
                err = _program_exception(resp["e"])
        except (OSError, ValueError, TypeError, RecursionError, KeyError, IndexError, ArithmeticError):
            err = None
        if err is None:
            state["gone"] = True
            raise ProgramGone(name)
        raise err
    call.__name__ = call.__qualname__ = name
    return call


# callables that would let the program act in the judge's process (which sees the host's files) or
# reach beyond plain data: never handed to it, whoever passes them (defence in depth; the tests are trusted)
_POWERFUL_BUILTINS = frozenset({"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
                                "globals", "locals", "vars", "breakpoint", "input", "help", "exit", "quit"})
_POWERFUL_MODULES = frozenset({"os", "posix", "sys", "subprocess", "shutil", "io", "_io", "socket", "_socket",
                               "ctypes", "_ctypes", "importlib", "pathlib", "signal", "gc", "inspect", "pickle",
                               "_pickle", "marshal", "code", "runpy", "tempfile", "glob", "fcntl"})


def _refuse_powerful(fns: list, start: int) -> None:
    """TypeError when a callable registered from `start` on is one of those above."""
    import builtins

    for f in fns[start:]:
        name = getattr(f, "__name__", None)
        module = (getattr(f, "__module__", None) or "").split(".")[0]
        owner = getattr(f, "__self__", None)
        if ((isinstance(name, str) and getattr(builtins, name, None) is f and name in _POWERFUL_BUILTINS)
                or module in _POWERFUL_MODULES or (isinstance(owner, type(sys)) and owner.__name__ in _POWERFUL_MODULES)):
            del fns[start:]
            raise TypeError(f"{name or f!r} is not handed to the program")


def _run_call_back(req: dict, fns: list) -> str:
    """Runs the tests' callable the program called (here, in the judge, on plain arguments) and
    returns the reply: its plain result, or the name of the builtin exception it raised. The
    program's exceptions raised in it (through a nested proxy) travel as that name; the judge's
    own ProgramGone / NeedsInProcess end the tests."""
    index = req.get("cb")
    try:
        if (type(index) is not int or not 0 <= index < len(fns) or not isinstance(req.get("a"), list)
                or not isinstance(req.get("k"), dict)):
            raise ValueError("malformed call-back")
        args = [wire.decode(a) for a in req["a"]]  # no stub maker: no callable comes from the program
        kwargs = {str(k): wire.decode(v) for k, v in req["k"].items()}
    except (ValueError, TypeError, RecursionError):
        return json.dumps({"e": "TypeError"})
    try:
        known = len(fns)
        out = {"v": wire.encode(fns[index](*args, **kwargs), fns=fns)}
        _refuse_powerful(fns, known)
    except Exception as e:  # noqa: BLE001 - the program may catch what the tests' callable raised
        out = {"e": _builtin_base(type(e))}
    try:
        return json.dumps(out, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        return json.dumps({"e": "TypeError"})


def judge_process(job_r: int, err_w: int, verdict_w: int, rpc_fd: int) -> None:
    """A judge, forked straight from the zygote (it runs the dataset's tests on plain data, never
    the program's code): its own host uid, rlimits, the seccomp filter and a SIGALRM at the wall
    limit (the tests are trusted to leave it alone), then the tests; the verdict goes to
    verdict_w: "ok", "fail" or "in-process"."""
    verdict = "fail"
    try:
        _name(b"r1m-judge")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if ZYGOTE_CGROUP is not None:
            _oom_score(0)
        job = json.loads(_read_all(job_r, 64 << 20))
        devnull = os.open("/dev/null", os.O_RDONLY)
        for target, fd in ((0, devnull), (1, err_w), (2, err_w)):
            os.dup2(fd, target)
        low = 3
        for fd in sorted((verdict_w, rpc_fd)) + [1 << 16]:
            os.closerange(low, fd)
            low = fd + 1
        drop_to(own_id())
        os.chdir("/")
        os.environ.clear()
        os.environ.update({"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
        set_limits(job["limits"])
        signal.alarm(int(job["limits"]["wall_seconds"]) + 1)
        install_seccomp(base64.b64decode(job["seccomp"]))
    except BaseException as e:  # noqa: BLE001
        os.write(verdict_w, f"setup {type(e).__name__}: {e}".encode()[:4000])
        os._exit(71)
    try:
        verdict = _judge(job["judge"], rpc_fd)
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001
        verdict = "fail"
    os.write(verdict_w, verdict.encode())
    os._exit(0)


def _read_all(fd: int, cap: int) -> bytes:
    buf = bytearray()
    while len(buf) <= cap:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        buf += chunk
    os.close(fd)
    return bytes(buf)


def _judge(judge: dict, rpc_fd: int) -> str:
    """Runs the tests in this interpreter, which never held the program's code: the program's
    names are proxies that send plain arguments to it and get plain values back."""
    import builtins

    state = {"gone": False, "in_process": False}
    if _recv(rpc_fd) != READY:  # the program failed to load (or exited first)
        sys.stderr.write("the program did not load\n")
        return "fail"
    glb = {"__name__": "__main__", "__builtins__": builtins}
    for name in judge["modules"]:
        glb[name] = __import__(name)
    for name in judge["proxies"]:
        glb[name] = _proxy(judge.get("aliases", {}).get(name, name), rpc_fd, state)
    ok = False
    try:
        exec(compile(judge["tests"], "tests.py", "exec"), glb)
        ok = True
    except SystemExit as e:
        sys.stderr.write(f"SystemExit({e.code!r}) in the tests\n")
    except BaseException:
        import traceback

        traceback.print_exc()
    if state["in_process"]:
        return "in-process"
    return "ok" if ok and not state["gone"] else "fail"


def run_program(job: dict, token_fd: int, rpc_fd) -> None:
    """Runs the program, then (by the job's mode) its tests here or serves its functions to a
    judge (judge_process, another process). The token goes out only
    if all of that completed. With no tests (stdio) a clean sys.exit(0) ends the program normally;
    otherwise any exit is a failure. The token is read from its sealed memfd only at the end, so no
    Python object holds it while the program runs (a program that hunts for that fd can still
    find it: see the README)."""
    code, tests = job["code"], job.get("tests")
    stdio = tests is None and rpc_fd is None
    path = os.path.join(os.getcwd(), "solution.py")  # __file__ and argv[0] (no such file: /tmp stays empty)
    glb = {"__name__": "__main__", "__builtins__": __builtins__, "__file__": path}
    sys.argv = [path]
    ok = False
    try:
        exec(compile(code, path, "exec"), glb)
        if rpc_fd is not None:
            _serve(glb, rpc_fd)
        elif tests is not None:
            exec(compile(tests, "tests.py", "exec"), glb)
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
        out = b"\n" + os.pread(token_fd, 256, 0) + b"\n"
        while out:
            out = out[os.write(1, out):]
    os._exit(0 if ok else 1)


def init(job: dict, report_w: int, alive_r: int, rpc_fd) -> None:
    """PID 1 of the sandbox: confine this process, report 'ok' to the supervisor, run the job."""
    _name(b"r1m-program")
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
        low = 3
        for fd in sorted(fd for fd in (report_w, rpc_fd) if fd is not None) + [1 << 16]:
            os.closerange(low, fd)
            low = fd + 1
        stdin_from(job["stdin"].encode())
        token_fd = _sealed(job.pop("token").encode(), cloexec=True)  # out of the job dict the callers hold
        os.environ.clear()
        os.environ.update({"HOME": os.getcwd(), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
        set_limits(job["limits"])
        if isolate:
            drop_capabilities()
        install_seccomp(base64.b64decode(job["seccomp"]))
    except BaseException as e:
        os.write(report_w, f"{type(e).__name__}: {e}".encode()[:4000])
        os._exit(71)
    os.write(report_w, b"ok")
    os.close(report_w)
    run_program(job, token_fd, rpc_fd)


# ---------------------------------------------------------------- supervisor


def _read_exactly(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the trainer closed the job pipe early")
        buf += chunk
    return bytes(buf)


def supervise(status_fd: int, rpc_fd=None) -> None:
    """One job: fd 0 brings an 8-byte length and the JSON job, then stays open as the abort
    channel (EOF: the trainer gave up or died: kill the program now); fds 1/2 are the program's
    stdout/stderr; `status_fd` gets this supervisor's verdict as JSON."""
    _name(b"r1m-supervisor")
    status = os.fdopen(status_fd, "w")

    def report(**kw) -> None:
        status.write(json.dumps(kw))
        status.flush()

    job = json.loads(_read_exactly(0, int.from_bytes(_read_exactly(0, 8), "little")))
    workdir, cgroup, ooms, dedicated = None, ZYGOTE_CGROUP, 0, False
    try:
        if cgroup is not None:  # before this process gives up root
            _oom_score(0)  # what it starts may be picked again (the zygote may not)
            ooms = _oom_kills(cgroup)
            cap_memory(cgroup, int(job["limits"]["memory_total_bytes"]))
        if job["isolate"]:
            enter_sandbox(job["limits"]["disk_bytes"])
        else:
            import tempfile

            job["workdir"] = workdir = tempfile.mkdtemp(prefix="r1mega-unsafe-sandbox-")
            own = own_id()
            if os.geteuid() == 0:
                os.chown(workdir, own, own)
            dedicated = os.geteuid() == 0 and own == SANDBOX_ID_BASE + os.getpid()
            drop_to(own)
            _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(child subreaper)")
        lim = job["limits"]
        if cgroup is None:  # no memory cgroup: processes x address space must bound the total
            lim["processes"] = max(1, min(int(lim["processes"]), int(lim["memory_total_bytes"]) // int(lim["memory_bytes"])))
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
        init(job, report_w, alive_r, rpc_fd)
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
    if not job["isolate"]:
        end_leftovers(dedicated)
    if workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    report(setup="ok", timeout=timed_out, aborted=aborted, exit=os.waitstatus_to_exitcode(st),
           cpu=usage.ru_utime + usage.ru_stime, oom_kills=_oom_kills(cgroup) - ooms)


def _children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: every process's parent
        pass
    kids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == me:
                    kids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def end_leftovers(dedicated: bool, budget: float = 5.0) -> None:
    """The unsafe mode's stand-in for a PID namespace, after the program's first process ended:
    this supervisor is the program's child subreaper, so whatever it left running (setsid,
    double forks) has become a child of this process; kill and reap them all. As root, on the
    sandbox's own uid, kill(-1) ends every process of that uid at once, a forking one included
    (a fork under way with a fatal signal pending fails); as another user, the children are
    killed one by one until none is left (bounded by `budget` seconds)."""
    deadline = time.monotonic() + budget
    dedicated = dedicated and 0 not in os.getresuid()  # as root, kill(-1) would end every process of the host
    while True:
        if dedicated:
            try:
                os.kill(-1, signal.SIGKILL)  # all of this uid's processes but this one
            except ProcessLookupError:
                pass
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)


# ---------------------------------------------------------------- one memory cap for all of a program's processes


CGROUP_KNOBS = {"memory": ("memory.max", "memory.limit_in_bytes"), "cpu": ("cpu.weight", "cpu.shares")}


def find_memory_cgroup():
    return find_cgroup("memory")


def find_cgroup(controller: str):
    """(directory, version) where this process may create cgroups with `controller` (v2 with it
    delegated to children, or v1's hierarchy of it), probed once; None where neither."""
    try:
        with open("/proc/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    found = []
    for _, controllers, path in groups:
        for m in mounts:
            sep = m.index("-")
            fstype, opts, root, point = m[sep + 1], m[-1].split(","), m[3], m[4]
            rel = path[len(root):] if root != "/" and path.startswith(root) else path
            if controllers == "" and fstype == "cgroup2":
                found.append((point + rel, 2))
            elif controller in controllers.split(",") and fstype == "cgroup" and controller in opts:
                found.append((point + rel, 1))
    for d, version in found:
        try:
            if version == 2:
                with open(f"{d}/cgroup.subtree_control") as f:
                    if controller not in f.read().split():
                        continue
            probe = f"{d}/r1mega-probe-{os.getpid()}"
            os.mkdir(probe)
            usable = os.path.exists(f"{probe}/{CGROUP_KNOBS[controller][2 - version]}")
            os.rmdir(probe)
        except OSError:
            continue
        if usable:
            return d, version
    return None


CGROUP_HEADROOM = 64 << 20  # the supervisor's and the judge's own pages, besides the program's total


def join_memory_cgroup() -> tuple:
    """The zygote moves into a memory cgroup of its own (its pages so far stay charged where
    they were): every supervisor, program and judge it forks is born there, one program at a
    time. (path, dir fd); the trainer removes it after the zygote exits."""
    parent, version = MEMORY_CGROUP
    path = f"{parent}/r1mega-zygote-{os.getpid()}"
    sweep_stale_cgroups(parent)
    os.mkdir(path)
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        if version == 2 and os.path.exists(f"{path}/memory.swap.max"):
            _write(f"{path}/memory.swap.max", "0")
        _write(f"{path}/cgroup.procs", str(os.getpid()))
    except BaseException:
        os.rmdir(path)
        raise
    return path, dfd, version


def join_cpu_cgroup() -> None:
    """The zygote moves into a CPU cgroup of its own (v1's cpu hierarchy; under v2 the memory
    cgroup above has the cpu controller wherever its parent hands it down): all of a program's
    tasks then weigh like one task, against the trainer's and other programs' (its 40 busy
    tasks took ~20/21 of a container's CPU before; the kernel's per-session autogroups, which
    would group them, apply only in the root cgroup). The trainer removes it after the zygote exits."""
    found = find_cgroup("cpu")
    if found is None or found[1] != 1:
        return
    path = f"{found[0]}/r1mega-zygote-{os.getpid()}"
    sweep_stale_cgroups(found[0])
    os.mkdir(path)
    try:
        _write(f"{path}/cgroup.procs", str(os.getpid()))
    except BaseException:
        os.rmdir(path)
        raise


def sweep_stale_cgroups(parent: str) -> None:
    """Remove the cgroups that zygotes of killed trainers left behind (no atexit ran): each is
    named by its zygote's pid, so one whose pid is gone -- or is this process's, which no live
    zygote can hold -- is stale. A stale one named by a reused pid also stopped that zygote from
    joining a cgroup at all (mkdir: exists), silently dropping the memory cap. rmdir refuses a
    cgroup that still holds a process; a pid that is alive (perhaps reused) is left for later."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        kind, _, pid = name.rpartition("-")
        if kind not in ("r1mega-zygote", "r1mega-probe") or not pid.isdigit():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue
            except ProcessLookupError:
                pass
            except OSError:
                continue
        try:
            os.rmdir(f"{parent}/{name}")
        except OSError:
            pass


def _oom_score(adj: int) -> None:
    try:
        _write("/proc/self/oom_score_adj", str(adj))
    except OSError:  # e.g. a container that withholds lowering it
        pass


def cap_memory(cgroup: tuple, total: int) -> None:
    """This job's cap over all its processes, swap included (set per job, as root, by its supervisor)."""
    path, _, version = cgroup
    knobs = ["memory.max"] if version == 2 else ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    knobs = [k for k in knobs if os.path.exists(f"{path}/{k}")]
    try:  # v1: memory may not exceed memory+swap, so lowering goes memory first, raising the other way
        for knob in knobs:
            _write(f"{path}/{knob}", str(total + CGROUP_HEADROOM))
    except OSError:
        for knob in reversed(knobs):
            _write(f"{path}/{knob}", str(total + CGROUP_HEADROOM))


def _oom_kills(cgroup):
    if cgroup is None:
        return 0
    for knob in ("memory.events", "memory.oom_control"):
        try:
            fd = os.open(knob, os.O_RDONLY, dir_fd=cgroup[1])
        except OSError:
            continue
        with os.fdopen(fd) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


MEMORY_CGROUP = None  # where memory cgroups can be made (set in the zygote)
ZYGOTE_CGROUP = None  # the zygote's own
VISIBLE = None  # the host paths every sandbox shows, worked out once in the zygote


def zygote(control_fd: int) -> None:
    """Forks one supervisor per job received on the control socket (the fds of its pipes come
    with the message), so no job pays for an interpreter's start-up or a fork of the trainer.
    Holds no job data itself; exits when the trainer closes the socket."""
    import builtins
    import socket

    def exit(code=None):  # what site would have added: exit() / quit() end the program
        raise SystemExit(code)

    builtins.exit = builtins.quit = exit
    global MEMORY_CGROUP, VISIBLE
    MEMORY_CGROUP = find_memory_cgroup()
    for name in PRELOAD:  # shared by every program through fork
        try:
            __import__(name)
        except ImportError:
            pass
    VISIBLE = _visible_paths()  # after the preloads, whose shared objects it includes
    global ZYGOTE_CGROUP
    if MEMORY_CGROUP is not None:
        try:
            ZYGOTE_CGROUP = join_memory_cgroup()
        except OSError:
            ZYGOTE_CGROUP = None
        _oom_score(-1000)  # the kernel's OOM killer picks the program, never this (where allowed)
    try:
        join_cpu_cgroup()
    except OSError:
        pass
    import gc

    gc.freeze()  # what the zygote holds is never scanned again: its forks keep sharing those pages
    sock = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 5)
        except InterruptedError:
            continue
        if not msg:
            return
        if len(fds) not in (4, 5) or msg not in (b"job", b"judge") or (msg == b"judge" and len(fds) != 4):
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                if msg == b"judge":
                    judge_process(*fds)
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                for fd in fds[:3]:
                    if fd > 2:
                        os.close(fd)
                supervise(fds[3], fds[4] if len(fds) == 5 else None)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)


PRELOAD = ("traceback", "collections", "itertools", "functools", "heapq", "bisect", "math", "string", "re",
           "random", "typing", "dataclasses", "fractions", "decimal", "statistics")

if __name__ == "__main__":
    zygote(int(sys.argv[1]))
