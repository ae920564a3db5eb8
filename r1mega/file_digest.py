"""Cheap content digests of large files: what a resume compares to tell "the same file" from
"another file at the same path" without reading terabytes. The size, the first and last chunk and
chunks spread evenly between them are hashed (a file no larger than all the chunks together is
hashed whole), so a rebuilt, appended, truncated or retokenised file is told apart, whatever its
modification time says; an untouched file (or a copy of it) keeps its digest."""
from __future__ import annotations

import hashlib
import os

CHUNKS = 64
CHUNK_BYTES = 1 << 16  # 64 chunks of 64 KiB: at most 4 MiB read per file


def sampled_digest(path: str, chunks: int = CHUNKS, chunk_bytes: int = CHUNK_BYTES, start: int = 0) -> str:
    """sha256 (hex) of the file's size and sampled content from byte `start` on (OSError if unreadable)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(f"{size}:{start}:".encode())
        span = max(size - start, 0)
        if span <= chunks * chunk_bytes:
            f.seek(start)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            step = (span - chunk_bytes) / (chunks - 1)
            for i in range(chunks):
                f.seek(start + int(i * step))
                h.update(f.read(chunk_bytes))
    return h.hexdigest()


TENSOR_EDGE = 256  # bytes hashed at each end of every tensor


def safetensors_digest(path: str) -> str:
    """sha256 (hex) of a safetensors file's size, header, each tensor's first and last bytes and
    chunks sampled over its data: weights rewritten with equal shapes, or one tensor of many changed
    (a fine-tune of a few matrices changes their every element), get another digest; a copy or a
    `touch` keeps it. One short read per tensor plus 4 MiB per file."""
    import json
    import struct

    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = f.read(min(n, max(size - 8, 0)))
        h.update(f"{size}:".encode() + head + header)
        try:
            entries = json.loads(header)
            spans = sorted(tuple(v["data_offsets"]) for k, v in entries.items() if k != "__metadata__")
        except (ValueError, TypeError, KeyError, AttributeError):
            spans = []  # a damaged header is still told apart by its bytes; the loader names it
        base = 8 + n
        for lo, hi in spans:
            for at in sorted({lo, max(lo, hi - TENSOR_EDGE)}):
                f.seek(base + at)
                h.update(f.read(min(TENSOR_EDGE, hi - at)))
    h.update(sampled_digest(path, start=8 + n).encode())
    return h.hexdigest()
