"""The sandbox's seccomp filter, built as classic-BPF bytes here (trusted side) and installed by the
child with prctl(PR_SET_SECCOMP) after no_new_privs.

Why hand-built: the filter is ~150 instructions of a fixed shape, and the only packaged builder
(libseccomp) is a system library that is not on every training image; building the bytes needs
nothing but `struct`.

Policy (a deny-list on top of the namespaces, which already withhold every capability): calls that
reach kernel surface a solution never needs (namespaces, mounts, ptrace and cross-process memory,
BPF, io_uring, keyrings, modules, perf, userfaultfd, clocks, swap, reboot, mount listing ...) fail
with EPERM; so do memory that no rlimit counts (SysV shared memory, message queues and semaphores,
memfd_create: pages that outlive every mapping, so RLIMIT_AS never sees them); so do kernel objects
counted per user or host-wide that the trainer shares (Linux AIO contexts, which fill the host's
aio-nr; inotify instances; signals queued with data by rt_sigqueueinfo/rt_tgsigqueueinfo) and
sysinfo (the host's uptime, load and memory);
clone() with any namespace flag fails; clone3() answers ENOSYS so libc falls back to clone();
sockets other than AF_UNIX fail; setting a socket's buffer sizes does nothing (and succeeds) and
F_SETPIPE_SZ fails, so socket and pipe buffers, which no rlimit counts, stay at their defaults;
TIOCSTI/TIOCLINUX ioctls fail; prctl(PR_SET_PDEATHSIG) fails so the sandbox's init cannot detach itself from its supervisor; personality() may only query. Any
other architecture (x32, i386 via int 0x80) kills the process.
"""
from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data offsets
_NR, _ARCH = 0, 4


def _arg_lo(i: int) -> int:  # low 32 bits of argument i (little-endian)
    return 16 + 8 * i


# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_ARCHES = {  # machine -> (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, dict(
        ptrace=101, process_vm_readv=310, process_vm_writev=311, pidfd_getfd=438, kcmp=312,
        mount=165, umount2=166, pivot_root=155, chroot=161, setns=308, unshare=272, move_mount=429,
        open_tree=428, fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442,
        keyctl=250, add_key=248, request_key=249, bpf=321, perf_event_open=298, userfaultfd=323,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, kexec_load=246,
        kexec_file_load=320, init_module=175, finit_module=313, delete_module=176,
        open_by_handle_at=304, name_to_handle_at=303, reboot=169, swapon=167, swapoff=168,
        syslog=103, acct=163, settimeofday=164, clock_settime=227, clock_adjtime=305, adjtimex=159,
        quotactl=179, quotactl_fd=443, fanotify_init=300, lookup_dcookie=212, uselib=134, ustat=136,
        sysfs=139, vhangup=153, iopl=172, ioperm=173, modify_ldt=154, sethostname=170,
        setdomainname=171, nfsservctl=180, migrate_pages=256, move_pages=279, vmsplice=278,
        memfd_secret=447, process_madvise=440, create_module=174, get_kernel_syms=177, query_module=178,
        memfd_create=319, shmget=29, shmat=30, shmctl=31, shmdt=67, semget=64, semop=65, semctl=66,
        semtimedop=220, msgget=68, msgsnd=69, msgrcv=70, msgctl=71, statmount=457, listmount=458,
        open_tree_attr=467,
        io_setup=206, io_destroy=207, io_getevents=208, io_submit=209, io_cancel=210, io_pgetevents=333,
        inotify_init=253, inotify_init1=294, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, sysinfo=99,
        personality=135, clone=56, clone3=435, socket=41, socketpair=53, ioctl=16, prctl=157,
        setsockopt=54, fcntl=72)),
    "aarch64": (0xC00000B7, dict(
        ptrace=117, process_vm_readv=270, process_vm_writev=271, pidfd_getfd=438, kcmp=272,
        mount=40, umount2=39, pivot_root=41, chroot=51, setns=268, unshare=97, move_mount=429,
        open_tree=428, fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442,
        keyctl=219, add_key=217, request_key=218, bpf=280, perf_event_open=241, userfaultfd=282,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, kexec_load=104,
        kexec_file_load=294, init_module=105, finit_module=273, delete_module=106,
        open_by_handle_at=265, name_to_handle_at=264, reboot=142, swapon=224, swapoff=225,
        syslog=116, acct=89, settimeofday=170, clock_settime=112, clock_adjtime=266, adjtimex=171,
        quotactl=60, quotactl_fd=443, fanotify_init=262, lookup_dcookie=18, vhangup=58,
        sethostname=161, setdomainname=162, nfsservctl=42, migrate_pages=238, move_pages=239,
        vmsplice=75, memfd_secret=447, process_madvise=440,
        memfd_create=279, shmget=194, shmctl=195, shmat=196, shmdt=197, semget=190, semctl=191,
        semtimedop=192, semop=193, msgget=186, msgctl=187, msgrcv=188, msgsnd=189, statmount=457,
        listmount=458, open_tree_attr=467,
        io_setup=0, io_destroy=1, io_submit=2, io_cancel=3, io_getevents=4, io_pgetevents=292,
        inotify_init1=26, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, sysinfo=179,
        personality=92, clone=220, clone3=435, socket=198, socketpair=199, ioctl=29, prctl=167,
        setsockopt=208, fcntl=25)),
}
_ARG_CHECKED = {"personality", "clone", "clone3", "socket", "socketpair", "ioctl", "prctl", "setsockopt", "fcntl"}

CLONE_NS_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                  | 0x40000000 | 0x00000080)  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME
AF_UNIX = 1
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
PR_SET_PDEATHSIG = 1
PER_QUERY = 0xFFFFFFFF
SOL_SOCKET = 1
SOCKET_BUFFER_SIZES = (7, 8, 32, 33)  # SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE
F_SETPIPE_SZ = 1031
X32_SYSCALL_BIT = 0x40000000


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _ret(action: int) -> bytes:
    return _ins(_RET_K, action)


def _deny(err: int) -> bytes:
    return _ret(_RET_ERRNO | err)


def supported() -> bool:
    return platform.machine() in _ARCHES


def build_filter(machine: str | None = None) -> bytes:
    """The filter program for `machine` (default: this one) as packed struct sock_filter[]."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise OSError(f"no seccomp syscall table for architecture {machine!r} (have {sorted(_ARCHES)})")
    audit_arch, nr = _ARCHES[machine]
    eperm = _deny(errno.EPERM)
    prog = [_ins(_LD_W_ABS, _ARCH), _ins(_JEQ_K, audit_arch, 1, 0), _ret(_RET_KILL_PROCESS),
            _ins(_LD_W_ABS, _NR)]
    if machine == "x86_64":  # x32 ABI numbers alias the 64-bit table: refuse them all
        prog += [_ins(_JGE_K, X32_SYSCALL_BIT, 0, 1), eperm]
    for name, n in nr.items():
        if name not in _ARG_CHECKED:
            prog += [_ins(_JEQ_K, n, 0, 1), eperm]

    def on(name: str, body: list[bytes]) -> None:  # if nr == name: body (which must return)
        prog.append(_ins(_JEQ_K, nr[name], 0, len(body)))
        prog.extend(body)

    load = lambda i: _ins(_LD_W_ABS, _arg_lo(i))  # noqa: E731
    allow = _ret(_RET_ALLOW)
    on("clone3", [_deny(errno.ENOSYS)])
    on("clone", [load(0), _ins(_JSET_K, CLONE_NS_FLAGS, 0, 1), eperm, allow])
    on("socket", [load(0), _ins(_JEQ_K, AF_UNIX, 0, 1), allow, _deny(errno.EAFNOSUPPORT)])
    on("socketpair", [load(0), _ins(_JEQ_K, AF_UNIX, 0, 1), allow, _deny(errno.EAFNOSUPPORT)])
    on("ioctl", [load(1), _ins(_JEQ_K, TIOCSTI, 1, 0), _ins(_JEQ_K, TIOCLINUX, 0, 1), eperm, allow])
    on("prctl", [load(0), _ins(_JEQ_K, PR_SET_PDEATHSIG, 0, 1), eperm, allow])
    on("personality", [load(0), _ins(_JEQ_K, PER_QUERY, 1, 0), _ins(_JEQ_K, 0, 0, 1), allow, eperm])
    # socket buffer sizes: the call succeeds and changes nothing (errno 0 skips it), so a socket
    # keeps the host's default send buffer; buffers past it held memory outside every rlimit
    n = len(SOCKET_BUFFER_SIZES)
    on("setsockopt", [load(1), _ins(_JEQ_K, SOL_SOCKET, 0, n + 2), load(2)]
       + [_ins(_JEQ_K, opt, n - 1 - i, 0) for i, opt in enumerate(SOCKET_BUFFER_SIZES[:-1])]
       + [_ins(_JEQ_K, SOCKET_BUFFER_SIZES[-1], 0, 1), _deny(0), allow])
    on("fcntl", [load(1), _ins(_JEQ_K, F_SETPIPE_SZ, 0, 1), eperm, allow])
    prog.append(allow)
    return b"".join(prog)
