"""What identifies a Hugging Face directory's weights for a resumed generate/eval/reject-sample is
their content, not file times: a `touch` (or a copy keeping the bytes) must not refuse a resume, and
weights rewritten with equal shapes (same sizes, same header) must."""
import json
import os
import shutil

import torch
from safetensors.torch import save_file

from r1mega.generation.model_source import weights_digest


def same_times(path, times):
    # a copy that keeps times (cp -p, rsync -t) of other weights: times cannot tell them apart
    for name, ns in times.items():
        os.utime(os.path.join(path, name), ns=(ns, ns))


def times(path):
    return {n: os.stat(os.path.join(path, n)).st_mtime_ns for n in os.listdir(path)}


def hf_dir(path, seed, shards=2):
    os.makedirs(path, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama"}, f)
    for s in range(shards):
        save_file({f"layer{s}.{i}.weight": torch.randn(64, 48, generator=g) for i in range(20)},
                  os.path.join(path, f"model-{s:05d}-of-{shards:05d}.safetensors"))
    return str(path)


def test_touch_and_copy_keep_the_digest(tmp_path):
    a = hf_dir(tmp_path / "a", seed=0)
    before = weights_digest(a)
    for name in os.listdir(a):
        os.utime(os.path.join(a, name), (1e9, 1e9))  # what `touch` or a copy without -p does to times
    assert weights_digest(a) == before
    shutil.copytree(a, tmp_path / "b")
    assert weights_digest(str(tmp_path / "b")) == before


def test_other_weights_of_equal_shapes_change_the_digest(tmp_path):
    a = hf_dir(tmp_path / "a", seed=0)
    before = weights_digest(a)
    stat, kept = {n: os.path.getsize(os.path.join(a, n)) for n in os.listdir(a)}, times(a)
    hf_dir(tmp_path / "a", seed=1)
    same_times(a, kept)
    assert {n: os.path.getsize(os.path.join(a, n)) for n in os.listdir(a)} == stat  # sizes and headers equal
    assert weights_digest(a) != before


def test_one_tensor_changed_in_one_shard_changes_the_digest(tmp_path):
    a = hf_dir(tmp_path / "a", seed=0)
    before, kept = weights_digest(a), times(a)
    path = os.path.join(a, "model-00001-of-00002.safetensors")
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors["layer1.7.weight"] = tensors["layer1.7.weight"] + 1e-3  # a fine-tune of one matrix
    save_file(tensors, path)
    same_times(a, kept)
    assert weights_digest(a) != before


def test_a_directory_made_with_time_digests_still_resumes(tmp_path):
    from r1mega.generation.model_source import store_weights_digest

    a, out = hf_dir(tmp_path / "a", seed=0), tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"weights": weights_digest(a, legacy=True)}))
    assert store_weights_digest(a, str(out)) == weights_digest(a, legacy=True) != weights_digest(a)
    (out / "meta.json").write_text(json.dumps({"weights": "0123456789abcdef"}))  # other weights: the store refuses
    assert store_weights_digest(a, str(out)) == weights_digest(a)


def test_an_imports_parts_are_vouched_for_by_their_listings(tmp_path):
    # r1mega-convert import writes partNNNNN.safetensors + .json (with CRC32s): a touch keeps the digest
    ck = tmp_path / "ck"
    ck.mkdir()
    t = {"model/w": torch.randn(8, 8)}
    save_file(t, str(ck / "part00000.safetensors"))
    (ck / "part00000.json").write_text(json.dumps({"model/w": {"shape": [8, 8], "crc32": 1}}))
    (ck / "meta.json").write_text(json.dumps({"step": 0}))
    before = weights_digest(str(ck))
    os.utime(ck / "part00000.safetensors", (1e9, 1e9))
    assert weights_digest(str(ck)) == before
