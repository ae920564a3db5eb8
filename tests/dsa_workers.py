"""Spawned-rank code for DeepSeek-V3.2's indexer-loss layout tests (kept free of transformers)."""
from __future__ import annotations

from r1mega.models.stage import IGNORE_INDEX
from r1mega.train.dsa_stage import index_loss, prepare_stage, set_index_loss_scale
from r1mega.train.lm_step import lm_forward_backward
from student_workers import build


def evaluate_with_index_loss(hf_dir: str, lay: dict, world: int, stage: str, ids, labels) -> dict:
    """LM loss, the indexer's KL per token and full gradients of this rank's stages, under `stage`."""
    family, chunks, ps, schedule, micro = build(hf_dir, lay, world)
    chunks.train()
    layers = prepare_stage(chunks, stage)
    tokens = int((labels != IGNORE_INDEX).sum())
    set_index_loss_scale(layers, 0.5, tokens)
    step = lm_forward_backward(chunks, ps, ids, labels, micro, schedule=schedule)
    out = {"loss": step.loss, "index_loss": index_loss(layers, ps, tokens), "dp": ps.r("dp")}
    grads = {}
    for chunk in chunks:
        grads.update(family.gather_full(chunk, grads=True))
    if ps.r("dp") == 0 and ps.r("tp") == 0:
        out["grads"] = grads
    return out


def dsa_worker(rank: int, world: int, cases: list, ids, labels) -> list[dict]:
    return [evaluate_with_index_loss(d, lay, world, stage, ids, labels) for d, lay, stage in cases]
