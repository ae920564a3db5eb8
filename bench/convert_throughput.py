"""Conversion throughput and peak memory, measured side by side in one run.

    python bench/convert_throughput.py [--hidden 1024 --layers 6 --experts 32 --shard-mb 256]

Builds a DeepSeek-V3-shaped bf16 checkpoint in sharded safetensors (an index, like the official
one), then times: a raw read of every byte of the files (the ceiling), import to an r1mega
checkpoint, export back to Hugging Face. Each step runs in a fresh child process; its peak RSS
growth during the step (VmHWM reset after the imports) is shown next to the largest shard.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.convert import expected_tensors  # noqa: E402

CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from tools.convert import do_export, do_import


def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024


open("/proc/self/clear_refs", "w").write("5")  # reset the peak: measure the step, not the imports
base = rss("VmRSS")
step, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
if step == "read":  # the ceiling: every byte of every file, in 64 MiB reads
    for name in sorted(os.listdir(src)):
        if name.endswith(".safetensors"):
            with open(os.path.join(src, name), "rb", buffering=0) as f:
                while f.read(64 << 20):
                    pass
elif step == "import":
    do_import(src, dst, shard_bytes={shard})
elif step == "export":
    do_export(src, dst, shard_bytes={shard})
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_above_start": rss("VmHWM") - base}}))
"""


def build(path: str, args) -> tuple[int, int]:
    cfg = {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 32000,
           "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "moe_intermediate_size": args.hidden // 2,
           "num_hidden_layers": args.layers, "num_attention_heads": 16, "q_lora_rank": args.hidden // 2,
           "kv_lora_rank": 256, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
           "n_routed_experts": args.experts, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4,
           "topk_group": 2, "first_k_dense_replace": 1, "num_nextn_predict_layers": 0, "rms_norm_eps": 1e-6}
    os.makedirs(path)
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    shard, size, files, weight_map, largest = {}, 0, 0, {}, 0

    def flush():
        nonlocal shard, size, files, largest
        name = f"model-{files:05d}.safetensors"
        save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        largest = max(largest, os.path.getsize(os.path.join(path, name)))
        shard, size, files = {}, 0, files + 1

    for key, shape in expected_tensors(cfg).items():
        t = torch.randn(shape, dtype=torch.bfloat16) if "bias" not in key else torch.zeros(shape)
        if size + t.numel() * t.element_size() > args.shard_mb * 2 ** 20 and shard:
            flush()
        shard[key] = t
        size += t.numel() * t.element_size()
    flush()
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(path, "model.safetensors.index.json"), "w"))
    total = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))
    return total, largest


def child(step: str, src: str, dst: str, shard: int) -> dict:
    code = CHILD.format(root=ROOT, shard=shard)
    out = subprocess.run([sys.executable, "-c", code, step, src, dst], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--shard-mb", type=int, default=256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "hf")
        total, largest = build(src, args)
        shard = args.shard_mb * 2 ** 20
        rows = [("raw read", child("read", src, "", shard))]
        rows.append(("import", child("import", src, os.path.join(tmp, "ck"), shard)))
        rows.append(("export", child("export", os.path.join(tmp, "ck"), os.path.join(tmp, "out"), shard)))
        gb = total / 1e9
        print(f"checkpoint {gb:.2f} GB in shards of <= {args.shard_mb} MiB, largest shard {largest / 2**20:.0f} MiB")
        print(f"{'step':<10}{'seconds':>9}{'GB/s':>8}{'vs raw':>8}{'peak RSS growth':>22}{'/ largest shard':>17}")
        raw = rows[0][1]["seconds"]
        for name, r in rows:
            extra = r["peak_above_start"]
            print(f"{name:<10}{r['seconds']:>9.2f}{gb / r['seconds']:>8.2f}{raw / r['seconds']:>8.2f}"
                  f"{extra / 2**20:>18.0f} MiB{extra / largest:>17.2f}")


if __name__ == "__main__":
    main()
