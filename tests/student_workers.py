"""Spawned-rank code for the dense-student tests (kept free of transformers so ranks start fast)."""
from __future__ import annotations

import torch

from r1mega.config import ParallelConfig, TrainConfig, validate
from r1mega.inference.generate import GenerationConfig, generate, greedy_by_full_forward
from r1mega.config import build_config
from r1mega.models.family import family_for_hf
from r1mega.models.weights import load_hf_weights
from r1mega.parallel.layout import build_parallel_state, single_process_state
from r1mega.parallel.vocab_parallel import gather_vocab
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.setup import build_chunks

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10], [40, 41, 42, 43]]
NEW_TOKENS = 5


def build(hf_dir: str, lay: dict, world: int):
    """This rank's chunks of the student in `hf_dir` under layout `lay` (+ schedule/virtual/micro keys)."""
    lay = dict(lay)
    schedule, virtual = lay.pop("schedule", "1f1b"), lay.pop("virtual", 1)
    micro = lay.pop("microbatches", 1)
    family, model_cfg = family_for_hf(hf_dir)
    cfg = build_config(model_cfg, ParallelConfig(**lay))
    cfg.train = TrainConfig(schedule=schedule, virtual_stages=virtual)
    cfg = validate(cfg, world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    for chunk in chunks:
        load_hf_weights(chunk, hf_dir)
    return family, chunks, ps, schedule, micro


def evaluate(hf_dir: str, lay: dict, world: int, ids, labels) -> dict:
    """Logits (full vocab, this DP rank's rows), loss and full gradients of this rank's stages."""
    family, chunks, ps, schedule, micro = build(hf_dir, lay, world)
    fwd = lm_forward_backward(chunks, ps, ids, labels, micro, forward_only=True, schedule=schedule)
    step = lm_forward_backward(chunks, ps, ids, labels, micro, schedule=schedule)
    out = {"loss": step.loss, "dp": ps.r("dp")}
    if fwd.logits:
        out["logits"] = torch.cat([gather_vocab(part, ps.g("tp")).transpose(0, 1) for part in fwd.logits])
    grads = {}
    for chunk in chunks:
        grads.update(family.gather_full(chunk, grads=True))
    if ps.r("dp") == 0 and ps.r("tp") == 0:  # other ranks hold identical copies
        out["grads"] = grads
    return out


@torch.no_grad()
def decode(hf_dir: str, lay: dict, world: int) -> dict:
    """Greedy tokens with the KV cache and by full re-forwards (weights sharpened: no near-ties)."""
    _, chunks, ps, _, _ = build(hf_dir, lay, world)
    for p in chunks.parameters():
        if p.dim() > 1:
            p.mul_(3)
    cached = generate(chunks, ps, PROMPTS, GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0))
    full = greedy_by_full_forward(chunks, ps, PROMPTS, NEW_TOKENS)
    return {"cached": cached.tokens, "full": full, "values_per_token": cached.cache_values_per_token_layer}


def students_worker(rank: int, world: int, cases: list[tuple[str, str, dict]], ids, labels) -> list[dict]:
    """cases: (kind "eval" | "decode", hf_dir, layout) run in turn in one process group."""
    return [evaluate(d, lay, world, ids, labels) if kind == "eval" else decode(d, lay, world)
            for kind, d, lay in cases]
