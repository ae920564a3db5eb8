"""Which directories a command may write into, and one command at a time in each.

Ownership. Every command that writes a directory (generate, eval, reject-sample, pipeline, and
pretrain/sft/grpo for train.run_dir) marks the directory it creates with `.r1mega-owner.json`
(command, config hash, run id). It writes into a directory only when that directory is new, empty,
or marked by the same command (a resume); a non-empty directory it did not create is refused with
an OutputError, so nothing a user put there is rewritten or removed.

Lock. `.r1mega.lock` (pid, host, process start time, command) is created exclusively while a
command writes the directory. A second command on the same directory is refused by name; a lock
whose process is gone (same host, pid dead or reused) is taken over with a warning. Under torchrun
only rank 0 of the world holds it and every rank learns whether it succeeded (`claim_on_rank0`).
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
import uuid
from typing import Optional

from r1mega.errors import OutputError

MARKER = ".r1mega-owner.json"
LOCK = ".r1mega.lock"
RUN_ID = uuid.uuid4().hex[:12]  # one per process: the marker and the lock say which run wrote them
_HELD: dict[str, "DirLock"] = {}  # lock path -> lock, released at the end of the command or process


def config_hash(obj) -> str:
    """A short, stable hash of a JSON-able config (what the marker records)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def read_marker(path: str) -> Optional[dict]:
    file = os.path.join(path, MARKER)
    if not os.path.exists(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutputError(f"{file}: unreadable ownership marker ({e}); it was not written by r1mega as it is")
    if not isinstance(marker, dict) or not isinstance(marker.get("command"), str):
        raise OutputError(f"{file}: not an r1mega ownership marker (expected an object with 'command')")
    return marker


def check(path: str, command: str, key: str = "--out") -> Optional[dict]:
    """The marker of a directory `command` may write into (None: new or empty); OutputError else.
    Writes nothing."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"'{key}': {path} exists and is not a directory")
    if not os.path.isdir(path):
        return None
    try:
        entries = [e for e in os.listdir(path) if e != LOCK]
    except OSError as e:
        raise OutputError(f"'{key}': {path}: cannot read the directory ({e.strerror})") from None
    marker = read_marker(path)
    if marker is None:
        if entries:
            shown = ", ".join(sorted(entries)[:4]) + (" ..." if len(entries) > 4 else "")
            raise OutputError(f"'{key}': {path} is not empty ({shown}) and was not made by `r1mega {command}`; "
                              f"refusing to write into it. Use a new or empty directory")
        return None
    if marker["command"] != command:
        raise OutputError(f"'{key}': {path} was made by `r1mega {marker['command']}`; `r1mega {command}` does not "
                          f"write into it. Use another directory")
    return marker


def claim(path: str, command: str, key: str = "--out", cfg_hash: Optional[str] = None) -> dict:
    """Make `path` this command's output directory, or refuse (OutputError naming `key`).

    New or empty: created and marked (with the config hash, for the record). Marked by the same
    command: a resume. Anything else is refused."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"'{key}': {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"'{key}': {path}: cannot create the directory ({e.strerror})") from None
    marker = check(path, command, key)
    if marker is None:
        marker = {"command": command, "config_hash": cfg_hash, "run_id": RUN_ID,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname()}
        _write_exclusive(os.path.join(path, MARKER), json.dumps(marker, indent=1) + "\n", key)
        return marker
    return marker  # a resume; what may change on one (e.g. the model) is each command's own rule


def _write_exclusive(file: str, text: str, key: str) -> None:
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # another process claimed it at the same moment: the lock decides who writes
    except OSError as e:
        raise OutputError(f"{key}: cannot write {file} ({e.strerror})") from None
    _fill(fd, file, text, key)


def _fill(fd: int, file: str, text: str, key: str) -> None:
    """Write `text` into the file this process just created; when that fails (a full disk, a
    file-size limit) the file goes again, so no empty marker or lock is left to refuse a rerun."""
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        try:
            os.unlink(file)
        except OSError:
            pass
        raise OutputError(f"'{key}': cannot write {file} ({e.strerror or e}); free space or raise the file-size "
                          f"limit, then rerun") from None


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (Linux /proc), telling a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """An exclusive lock on one directory, held until release() (or the end of the process)."""

    def __init__(self, path: str, command: str, key: str = "--out"):
        self.file = os.path.join(path, LOCK)
        self.path, self.command, self.key = path, command, key
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
              "command": command, "run_id": RUN_ID, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.text = json.dumps(me)
        try:
            guard = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise OutputError(f"'{key}': {path}: cannot open the directory ({e.strerror})") from None
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # contenders on this host decide one at a time (stale takeover)
            self._acquire()
        finally:
            os.close(guard)  # drops the flock

    def _acquire(self) -> None:
        path, key = self.path, self.key
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as e:
                raise OutputError(f"'{key}': {path}: cannot create the lock {self.file} ({e.strerror})") from None
            _fill(fd, self.file, self.text, key)
            _HELD[self.file] = self
            return
        raise OutputError(f"'{key}': {path}: could not take the lock {self.file}; another command is starting there")

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.file) as f:
                other = json.load(f)
            pid, host = int(other["pid"]), str(other["host"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            if _empty_and_old(self.file):  # its writer died between creating and filling it
                _warn(f"{self.file}: taking over an empty lock left by a process that died while taking it")
                self._set_aside()
                return
            raise OutputError(f"'{self.key}': {self.path}: the lock {self.file} is unreadable; if no r1mega command "
                              f"runs there, remove it") from None
        here = socket.gethostname()
        if host == here and pid == os.getpid():
            stale = True  # left by an earlier command of this very process (which raised)
        elif host == here:
            stale = not _alive(pid) or (other.get("start") is not None and _start_time(pid) != other.get("start"))
            if stale:
                _warn(f"{self.file}: taking over the lock of `r1mega {other.get('command')}` (pid {pid}), "
                      f"which is no longer running")
        else:
            stale = False
        if not stale:
            raise OutputError(f"'{self.key}': {self.path} is in use by `r1mega {other.get('command')}` (pid {pid} on "
                              f"{host}, since {other.get('since')}); wait for it to finish or use another "
                              f"directory. If that process is gone, remove {self.file}")
        self._set_aside()

    def _set_aside(self) -> None:
        aside = f"{self.file}.stale.{os.getpid()}"
        try:
            os.rename(self.file, aside)  # only one of several contenders wins this rename
            os.remove(aside)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if _HELD.pop(self.file, None) is None:
            return
        try:
            with open(self.file) as f:
                if f.read() != self.text:
                    return  # not ours any more: leave it
            os.remove(self.file)
        except OSError:
            pass


def release(path: str) -> None:
    """Release this process's lock on `path`, if it holds one (e.g. when a command body raised)."""
    lock = _HELD.get(os.path.join(path, LOCK))
    if lock is not None:
        lock.release()


def _empty_and_old(file: str, age_s: float = 5.0) -> bool:
    try:
        st = os.stat(file)
    except OSError:
        return False
    return st.st_size == 0 and time.time() - st.st_mtime > age_s


def release_all() -> None:
    for lock in list(_HELD.values()):
        lock.release()


atexit.register(release_all)


def own_and_lock(path: str, command: str, key: str = "--out", cfg_hash: Optional[str] = None) -> DirLock:
    """claim() then lock the directory (this process). The lock is taken before the marker is
    trusted for a resume, so two commands started together cannot both pass the check.
    A foreign directory is refused before anything (not even the lock) is written into it."""
    check(path, command, key)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"'{key}': {path}: cannot create the directory ({e.strerror})") from None
    lock = DirLock(path, command, key)
    try:
        claim(path, command, key, cfg_hash)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_on_rank0(path: str, command: str, key: str = "--out", cfg_hash: Optional[str] = None
                   ) -> Optional[DirLock]:
    """own_and_lock on rank 0 of the world; with a process group every rank raises when it fails.
    Before ranks have joined (no group yet) other ranks skip it: rank 0's error stops the job."""
    import torch.distributed as dist

    grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if grouped else int(os.environ.get("RANK", "0"))
    lock, error = None, None
    if rank == 0:
        try:
            lock = own_and_lock(path, command, key, cfg_hash)
        except OutputError as e:
            error = str(e)
    if grouped:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise OutputError(error if rank == 0 else f"rank 0: {error}")
    return lock
