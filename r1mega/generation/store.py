"""Sharded JSONL of samples that survives a crash (kill -9) without duplicating or losing samples.

    <out>/meta.json            what was generated (samples per problem, sampling parameters, model (its
                               path and a digest of its weights), dtype,
                               how problem ids key the noise; the prompts dropped for their length)
    <out>/shard-00000.jsonl    {"id", "sample", "completion", "prompt_tokens", "completion_tokens",
    <out>/shard-00001.jsonl     "finish_reason", "prompt_digest", "question_digest", ["response_prefix"]}
                               one line per sample (prompt_digest: of the prompt tokens, a resume refuses a
                               changed prompt; question_digest: of the record's question before any
                               template, `reject-sample --samples-from` refuses another file's question)

The directory belongs to the command that made it (`r1mega/output_dir.py`: marker and lock): a
non-empty directory it did not make is refused, so no one else's file is rewritten; shards without
their meta.json are refused rather than "repaired" by today's settings. Only rank 0 writes. Each round's records are appended as whole lines in one write, then flushed and
fsynced, so after a crash a shard ends at worst with a torn last line and some problems with fewer
than k samples. Opening the store repairs that: a shard with a torn line or an incomplete problem is
rewritten (temp file + rename) without them, and those problems count as not done. Every session
appends to a new shard, so finished shards are never opened for writing again.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Iterator

from r1mega.atomic_io import fsync_dir, write_error, write_jsonl_atomic, write_text_atomic
from r1mega.errors import ConfigError, DataError, OutputError
from r1mega.output_dir import own_and_lock

SHARD = "shard-{:05d}.jsonl"
SHARD_NAME = re.compile(r"shard-(\d{5,})\.jsonl")
# meta.json keys that describe this session rather than how samples are drawn: brought up to date on
# a resume (a prompt appended to the file may be dropped for its length too)
NOTES = ("dropped_long_prompts",)


def response_text(record: dict) -> str:
    """What the model answered: the template's response prefix (e.g. "<think>\\n") + the completion."""
    return record.get("response_prefix", "") + record["completion"]


def read_shard(path: str) -> tuple[list[dict], bool]:
    """(records, whether the file needs repair: a torn or unparsable last line)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    torn = lines[-1] != ""  # a complete file ends with a newline
    recs = []
    for n, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', 'nested too deeply')}) - not a crash "
                            f"artefact, this file was edited or written by something else") from None
        if not (isinstance(rec, dict) and "id" in rec and isinstance(rec.get("sample"), int)
                and isinstance(rec.get("completion"), str)):
            raise DataError(f"{path}:{n}: expected a sample record with 'id', an integer 'sample' and a string "
                            f"'completion' (as `r1mega generate` writes them)")
        recs.append(rec)
    return recs, torn


def _as_compared(key: str, value):
    """A setting as a resume compares it: stop strings are a set (any of them ends a sample, whatever
    their order), so the same ones given in another order, or one given twice, are the same setting."""
    stop = value.get("stop") if key == "sampling" and isinstance(value, dict) else None
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return {**value, "stop": sorted(set(stop))}
    return value


class SampleStore:
    def __init__(self, out_dir: str, samples: int, meta: dict, shard_records: int = 100_000,
                 command: str = "generate", key: str = "--out"):
        self.dir, self.k, self.shard_records = out_dir, samples, shard_records
        self.lock = own_and_lock(out_dir, command, key)
        try:
            self._open(meta, samples, key)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, meta: dict, samples: int, key: str) -> None:
        out_dir = self.dir
        meta_file = os.path.join(out_dir, "meta.json")
        meta = {**meta, "samples": samples}
        shards = self.shards()
        if os.path.exists(meta_file):
            try:
                with open(meta_file, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise OutputError(f"{meta_file}: unreadable ({e}); cannot tell how the samples in {out_dir} "
                                  f"were made. Use another {key}") from None
            if not isinstance(old, dict):
                raise OutputError(f"{meta_file}: expected a JSON object, got {type(old).__name__}; "
                                  f"use another {key}")
            # mixing samples of another model or other sampling settings into one set would go unseen
            # (keys a store made before they were recorded lacks are not compared)
            compared = ("samples", "template", "model", "sampling") + tuple(k for k in ("prompts_sha256", "dtype", "weights")
                                                                            if k in old)
            changed = {k: (old.get(k), v) for k, v in meta.items()
                       if k in compared and _as_compared(k, old.get(k)) != _as_compared(k, v)}
            if changed:
                raise ConfigError(key, f"{out_dir} holds samples made with different settings "
                                 f"{ {k: f'{a!r} -> {b!r}' for k, (a, b) in changed.items()} }; "
                                 f"use another {key} or the same settings")
            self.meta = old  # what the directory was made with (e.g. its noise key scheme, or none)
            notes = {k: meta[k] for k in NOTES if k in meta and old.get(k) != meta[k]}
            if notes:
                self.meta = {**old, **notes}
                self._write_meta(meta_file, self.meta)
        elif shards:  # samples of unknown settings: repairing them by today's k would drop them
            raise OutputError(f"{out_dir} holds {len(shards)} shard(s) but no meta.json, so how they were "
                              f"made is unknown; restore meta.json or use another {key}")
        else:
            self._write_meta(meta_file, meta)
            self.meta = meta
        self.done: set[str] = set()
        self.prompt_digests: dict[str, str] = {}  # id -> digest of the prompt tokens (stores that record it)
        self.repaired = 0  # samples dropped from unfinished problems
        for path in shards:
            self._recover(path)
        nums = [_shard_number(p) for p in shards]
        self._next = max(nums, default=-1) + 1
        self._file = None
        self._path = ""
        self._lines = 0

    @staticmethod
    def _write_meta(meta_file: str, meta: dict) -> None:
        write_text_atomic(meta_file, json.dumps(meta, indent=1))

    @staticmethod
    def shard_paths(out_dir: str) -> list[str]:
        """Every shard, in the order written (SHARD's 5 digits grow past shard-99999)."""
        paths = [p for p in glob.glob(os.path.join(out_dir, "shard-*.jsonl"))
                 if SHARD_NAME.fullmatch(os.path.basename(p))]
        return sorted(paths, key=_shard_number)

    def shards(self) -> list[str]:
        return self.shard_paths(self.dir)

    def _recover(self, path: str) -> None:
        recs, torn = read_shard(path)
        by_id: dict[str, list[dict]] = {}
        for r in recs:
            by_id.setdefault(str(r["id"]), []).append(r)
        complete = set()
        for pid, rs in by_id.items():
            if pid in self.done:
                raise DataError(f"{path}: problem {pid!r} also appears complete in an earlier shard")
            if sorted(r["sample"] for r in rs) == list(range(self.k)):
                complete.add(pid)
            elif len(rs) > self.k or len({r["sample"] for r in rs}) != len(rs):
                raise DataError(f"{path}: problem {pid!r} has duplicate samples {sorted(r['sample'] for r in rs)}")
        self.done |= complete
        keep = [r for r in recs if str(r["id"]) in complete]
        self.prompt_digests.update((str(r["id"]), r["prompt_digest"]) for r in keep if "prompt_digest" in r)
        if torn or len(keep) != len(recs):
            self.repaired += len(recs) - len(keep)
            write_jsonl_atomic(path, keep)  # on failure the shard stays as it was: the next open repairs it

    def write(self, problems: list[tuple[str, list[dict]]]) -> None:
        """Append the records of finished problems (each with all k samples) durably."""
        lines = []
        for pid, recs in problems:
            if len(recs) != self.k:
                raise ValueError(f"problem {pid!r}: {len(recs)} samples, expected {self.k}")
            lines.extend(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        try:
            if self._file is None or self._lines >= self.shard_records:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                self._path = os.path.join(self.dir, SHARD.format(self._next))
                self._file = open(self._path, "a", encoding="utf-8")
                self._next += 1
                self._lines = 0
                fsync_dir(self.dir)
            self._file.write("".join(lines))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:  # e.g. a full disk: at worst a torn last line, which the next open repairs
            self._abandon()
            raise write_error(self._path, e) from None
        self._lines += len(lines)
        self.done |= {pid for pid, _ in problems}

    def _abandon(self) -> None:
        """Drop the shard being written after a failed write (its unwritten buffer too) and the lock."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the buffer that could not be written; the file keeps what reached it
            self._file = None
        self.lock.release()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self._file = None
                self.lock.release()
                raise write_error(self._path, e) from None
            self._file = None
        self.lock.release()

    def records(self) -> Iterator[dict]:
        for path in self.shards():
            yield from read_shard(path)[0]


def _shard_number(path: str) -> int:
    return int(SHARD_NAME.fullmatch(os.path.basename(path)).group(1))
