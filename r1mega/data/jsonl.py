"""JSONL reading that reports a malformed line by file and line number, never skipping it."""
from __future__ import annotations

import json
import re
from typing import Iterator, Optional

from r1mega.errors import DataError  # noqa: F401  (re-exported)


def iter_jsonl(path: str) -> Iterator[tuple[str, dict]]:
    """Yields (where, record) with where = 'path:line'; blank lines are allowed."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                f"re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            rec = loads_json(line, where)
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, rec


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads_json(text: str, where: str):
    """json.loads with every failure a DataError naming `where`: syntax, nesting too deep for the
    parser, and strings holding a lone UTF-16 surrogate (no text encoding can write them)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None
    if _SURROGATE_ESCAPE.search(text):  # only then can a decoded string hold a lone surrogate
        stack = [obj]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.keys())
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise DataError(f"{where}: a string holds a lone UTF-16 surrogate "
                                    f"({v[e.start]!r}), which is not text; fix the escape") from None
    return obj


def iter_texts(path: str, key: str = "text", limit: Optional[int] = None) -> Iterator[str]:
    for n, (where, rec) in enumerate(iter_jsonl(path)):
        if limit is not None and n >= limit:
            return
        if not isinstance(rec.get(key), str):
            raise DataError(f"{where}: field {key!r} is missing or not a string")
        yield rec[key]
