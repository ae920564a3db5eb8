"""Writes that never leave a half-written file behind: a temporary name beside the target, then
a rename (atomic on POSIX), and a directory fsync where a crash must not lose the rename."""
from __future__ import annotations

import json
import os

from r1mega.errors import OutputError


def open_fresh(path: str, mode: str = "w", **kwargs):
    """Open a temporary file name of ours for writing as a new file. A leftover there (a crashed
    write, or a symlink someone planted) is unlinked first: only the name goes, never what a
    symlink points at, which open(path, "w") would truncate and write through."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, mode, **kwargs)


def write_error(path: str, e: OSError) -> OutputError:
    """An OSError while writing `path` (a full disk, a file-size limit, a read-only mount) as the
    user error it is, naming the file."""
    return OutputError(f"{path}: cannot write ({e.strerror or e}); free space or raise the file-size limit, "
                       f"then rerun")


def write_text_atomic(path: str, text: str, durable: bool = False) -> None:
    """`text` at `path`, whole or not at all (the old file stays when the write fails). durable: the
    file and the rename are fsynced, so a crash right after cannot lose or tear it."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open_fresh(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(os.path.dirname(path) or ".")
    except OSError as e:
        discard(tmp)
        raise write_error(path, e) from None


def write_jsonl_atomic(path: str, rows) -> None:
    """One JSON object per line at `path`, durably, whole or not at all."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), durable=True)


def discard(tmp: str) -> None:
    """Remove a temporary file of ours after a failed write (its name only; nothing if gone)."""
    try:
        if os.path.islink(tmp) or os.path.isfile(tmp):
            os.unlink(tmp)
    except OSError:
        pass


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
