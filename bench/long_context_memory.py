"""Activation memory of long sequences on CPU: per recompute mode, and against sequence length.

    python bench/long_context_memory.py [--lengths 1024 4096 8192] [--config configs/model/tiny.yaml]

1. Bytes per token per layer held for backward (measured: live tensors after the forward of one
   layer), for train.recompute none / selective / full: the tiny model directly and the 671B
   config by the narrow-width fit `r1mega plan` uses.
2. Peak live tensor bytes of one training forward+backward of the tiny model on packed rows at
   each length, next to the dense-mask path it replaces (which builds [b, 1, s, s] masks and
   s x s scores), side by side in one process, with the step's seconds (under the recording
   mode, so slower than a plain step). Linear growth: peak / s stays flat.
"""
from __future__ import annotations

import argparse
import time

import torch

from r1mega.config import Config, ModelConfig, load_config, validate
from r1mega.data.sft import block_causal_mask
from r1mega.models.activation_memory import PeakLiveBytes
from r1mega.models.deepseek_v3.activation_memory import layer_activation_bytes
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.recompute import set_recompute
from r1mega.parallel.layout import single_process_state
from r1mega.train.setup import init_weights

MiB = 2 ** 20


def packed_docs(s: int, n_docs: int = 8) -> torch.Tensor:
    cuts = torch.linspace(0, s, n_docs + 1).long()
    docs = torch.zeros(1, s, dtype=torch.long)
    for d in range(n_docs):
        docs[0, cuts[d]:cuts[d + 1]] = d
    return docs


def step_peak(model, s: int, mask) -> tuple[int, float]:
    ids = torch.randint(0, model.cfg.vocab_size, (1, s), generator=torch.Generator().manual_seed(0))
    rec = PeakLiveBytes()
    t0 = time.perf_counter()
    with rec:
        model(ids, labels=ids, attn_mask=mask).token_loss.sum().backward()
    model.zero_grad(set_to_none=True)
    return rec.peak, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--dense-up-to", type=int, default=4096, help="longest s for the dense-mask path")
    p.add_argument("--big", default="configs/model/deepseek_v3_671b.yaml")
    args = p.parse_args()
    torch.set_num_threads(1)

    print("bytes per token per layer held for backward (float32, tp=1), measured:")
    tiny = ModelConfig()
    big = load_config(args.big).model
    print(f"  {'recompute':<10} {'tiny dense':>12} {'tiny moe':>12} {'671B dense':>12} {'671B moe':>12}")
    for mode in ("none", "selective", "full"):
        a, b = layer_activation_bytes(tiny, mode), layer_activation_bytes(big, mode)
        print(f"  {mode:<10} {a['dense']:>12,.0f} {a['moe']:>12,.0f} {b['dense']:>12,.0f} {b['moe']:>12,.0f}")

    print("\npeak live bytes of one training step (tiny model, packed rows, batch 1):")
    print(f"  {'s':>6} {'recompute':<10} {'doc ids MiB':>12} {'KiB/token':>10} {'step s':>7} "
          f"{'dense mask MiB':>15} {'ratio':>6} {'step s':>7}")
    for s in args.lengths:
        cfg = validate(Config(model=ModelConfig(max_position_embeddings=max(s, 4096))), 1).model
        model = DeepseekV3(cfg, single_process_state())
        init_weights(torch.nn.ModuleList([model]), seed=0)
        docs = packed_docs(s)
        for mode in ("none", "full"):
            set_recompute(model, mode)
            peak, dt = step_peak(model, s, docs)
            dense = ""
            if mode == "none" and s <= args.dense_up_to:
                dpeak, ddt = step_peak(model, s, block_causal_mask(docs))
                dense = f"{dpeak / MiB:>15.1f} {dpeak / peak:>6.1f} {ddt:>7.2f}"
            print(f"  {s:>6} {mode:<10} {peak / MiB:>12.1f} {peak / s / 1024:>10.1f} {dt:>7.2f} {dense}")


if __name__ == "__main__":
    main()
