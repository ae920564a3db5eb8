"""JSONL data files: read so that a malformed line is reported by file and line number, never skipped;
their content digest (what a checkpoint's position in them refers to)."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Iterator, Optional

from r1mega.errors import DataError  # noqa: F401  (re-exported)


def iter_jsonl(path: str, unique_keys: bool = True) -> Iterator[tuple[str, dict]]:
    """Yields (where, record) with where = 'path:line'; blank lines are allowed. unique_keys: an
    object naming a key twice is refused (JSON keeps the last silently: {"answer": "5", ...,
    "answer": "6"} is a merge gone wrong, not an answer); off for bulk text corpora (speed)."""
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
            rec = loads_json(line, where, unique_keys)
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, rec


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def loads_json(text: str, where: str, unique_keys: bool = False):
    """json.loads with every failure a DataError naming `where`: syntax, nesting too deep for the
    parser, strings holding a lone UTF-16 surrogate (no text encoding can write them) and, with
    unique_keys, an object that names a key twice."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_object) if unique_keys else json.loads(text)
    except _DuplicateKey as e:
        raise DataError(f"{where}: key {e.args[0]!r} appears twice in one object; JSON would keep the last "
                        f"silently, so which value is meant is unclear: keep one") from None
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
    for n, (where, rec) in enumerate(iter_jsonl(path, unique_keys=False)):
        if limit is not None and n >= limit:
            return
        if not isinstance(rec.get(key), str):
            raise DataError(f"{where}: field {key!r} is missing or not a string")
        yield rec[key]


def jsonl_digest(paths: list[str]) -> str:
    """sha256 over the data files' contents, in order: what a checkpoint's position in GRPO's prompt
    files or an SFT file refers to (a resume on other files would continue at a meaningless position)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()
