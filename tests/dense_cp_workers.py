"""Spawned-rank code for context parallelism on the dense students (no transformers import)."""
from __future__ import annotations

import torch

from r1mega.parallel.context_parallel import gather_sequence
from r1mega.parallel.vocab_parallel import gather_vocab
from r1mega.train.lm_step import lm_forward_backward
from student_workers import build


def evaluate(hf_dir: str, lay: dict, world: int, ids, labels, docs, positions) -> dict:
    """Whole-row logits of this DP rank, the loss, and full gradients of this rank's stages."""
    family, chunks, ps, schedule, micro = build(hf_dir, lay, world)
    kw = dict(attn_mask=docs, position_ids=positions, schedule=schedule)
    fwd = lm_forward_backward(chunks, ps, ids, labels, micro, forward_only=True, **kw)
    step = lm_forward_backward(chunks, ps, ids, labels, micro, **kw)
    out = {"loss": step.loss, "dp": ps.r("dp")}
    if fwd.logits:
        rows = []
        for local in fwd.logits:  # [s / cp, b, V / tp] per microbatch
            full = gather_vocab(local, ps.g("tp"))
            rows.append((gather_sequence(full, ps, ids.shape[1]) if ps.cp > 1 else full).transpose(0, 1))
        out["logits"] = torch.cat(rows)
    grads = {}
    for chunk in chunks:
        grads.update(family.gather_full(chunk, grads=True))
    if ps.r("dp") == 0 and ps.r("tp") == 0 and ps.r("cp") == 0:  # the others hold identical copies
        out["grads"] = grads
    return out


def dense_cp_worker(rank: int, world: int, cases: list[tuple[str, dict, bool]], ids, labels, docs,
                    positions) -> list[dict]:
    """cases: (hf_dir, layout, packed) run in turn in one process group; packed=False: causal rows."""
    return [evaluate(d, lay, world, ids, labels, docs if packed else None, positions if packed else None)
            for d, lay, packed in cases]


def sft_worker(rank: int, world: int, overrides: list[str]) -> list[dict]:
    """A short `r1mega sft` of the tiny distillation student; its metrics.jsonl rows (rank 0)."""
    import json
    import os

    from r1mega.config import load_config
    from r1mega.train.trainer import train

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "tiny", "distill_student.yaml"), overrides)
    train(cfg, "sft")
    return [json.loads(line) for line in open(os.path.join(cfg.train.run_dir, "metrics.jsonl"))] if rank == 0 else []
