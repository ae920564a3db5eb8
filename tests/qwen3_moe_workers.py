"""Spawned-rank code for the Qwen3-MoE training and rollout tests (no transformers import)."""
from __future__ import annotations

import torch

from r1mega.inference.generate import GenerationConfig, generate, generate_static
from r1mega.parallel.recompute import set_recompute
from r1mega.train.lm_step import lm_forward_backward
from student_workers import build

SAME_LENGTH_PROMPTS = [[5, 6, 7, 8], [10, 11, 12, 13], [3, 4, 9, 10]]  # no left padding: a full forward compares


def train_step(hf_dir: str, lay: dict, world: int, ids, labels, recompute: tuple = ("none", ())) -> dict:
    """Loss, the aux loss after_step reports, and full gradients of one step with the family's loss weights."""
    family, chunks, ps, schedule, micro = build(hf_dir, lay, world)
    set_recompute(chunks, *recompute)
    cfg, hooks = chunks[0].cfg, family.training
    step = lm_forward_backward(chunks, ps, ids, labels, micro, loss_weights=hooks.loss_weights(cfg), schedule=schedule)
    metrics = hooks.after_step(chunks, ps, cfg, False, step)
    grads = {}
    for chunk in chunks:
        grads.update(family.gather_full(chunk, grads=True))  # collective: every rank gathers
    out = {"loss": step.loss, "aux": metrics["aux_loss"], "max_load": metrics["expert_max_load"]}
    if ps.r("dp") == 0 and ps.r("tp") == 0 and ps.r("cp") == 0:
        out["grads"] = grads
    return out


def train_worker(rank: int, world: int, cases: list[tuple[str, dict]], ids, labels) -> list[dict]:
    return [train_step(path, lay, world, ids, labels) for path, lay in cases]


@torch.no_grad()
def recorded_routing(hf_dir: str) -> dict:
    """Greedy rollouts of both engines with their experts recorded, and the experts a full forward of the
    same tokens chooses (weights sharpened: no near-ties), on one process."""
    _, chunks, ps, _, _ = build(hf_dir, {}, 1)
    model = chunks[0]
    for p in model.parameters():
        if p.dim() > 1:
            p.mul_(3)
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0, record_routing=True)
    paged = generate(model, ps, SAME_LENGTH_PROMPTS, gen)
    static = generate_static(model, ps, SAME_LENGTH_PROMPTS, gen)
    model.eval()
    fed = paged.tokens[:, :-1]  # the last token is sampled, never fed
    plain = model(fed).logits
    full = {int(i): layer.mlp.last_topk_idx.view(fed.shape[1], fed.shape[0], -1).clone()
            for i, layer in model.layers.items() if hasattr(layer.mlp, "last_topk_idx")}
    replayed = model(fed, routing={i: r[:fed.shape[1]] for i, r in paged.routing.items()}).logits
    return {"paged": paged, "static": static, "full": full, "plain": plain, "replayed": replayed}
