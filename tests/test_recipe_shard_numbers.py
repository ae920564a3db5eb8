"""The sample store past 99,999 shards (a session per shard at least, or a small --shard-records):
SHARD's 5-digit name grows to shard-100000.jsonl, which the store's 5-digit glob did not list. Its
samples were invisible to a resume (generated again), to `eval` and to `reject-sample`, and the next
shard number restarted below it. Every shard-<digits>.jsonl is read now, in numeric order."""
from __future__ import annotations

import json

from r1mega.generation.store import SampleStore

K = 2


def _shard(path, pid: str):
    path.write_text("".join(json.dumps({"id": pid, "sample": i, "completion": f"c{i}"}) + "\n" for i in range(K)))


def test_shards_beyond_five_digits_are_read_in_numeric_order(tmp_path):
    out = tmp_path / "gen"
    store = SampleStore(str(out), K, {"prompts": "p.jsonl"})
    store.close()
    _shard(out / "shard-99999.jsonl", "a")
    _shard(out / "shard-100000.jsonl", "b")
    assert [p.rsplit("/", 1)[1] for p in SampleStore.shard_paths(str(out))] == ["shard-99999.jsonl",
                                                                                "shard-100000.jsonl"]
    store = SampleStore(str(out), K, {"prompts": "p.jsonl"})
    assert store.done == {"a", "b"}
    store.write([("c", [{"id": "c", "sample": i, "completion": "x"} for i in range(K)])])
    store.close()
    assert (out / "shard-100001.jsonl").exists()
    store = SampleStore(str(out), K, {"prompts": "p.jsonl"})
    assert [r["id"] for r in store.records()] == ["a", "a", "b", "b", "c", "c"]
    store.close()
