"""Spawned-rank code for the rollout tests (no transformers import)."""
from __future__ import annotations

import torch

from r1mega.config import Config, ModelConfig, ParallelConfig, validate
from r1mega.inference.generate import GenerationConfig, generate, greedy_by_full_forward
from r1mega.parallel.layout import build_parallel_state, single_process_state
from r1mega.train.setup import build_chunks, init_weights

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10], [40, 41, 42, 43]]


def sharp_model(par: dict, world: int):
    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=4, num_mtp_layers=1),
                          parallel=ParallelConfig(**par)), world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=5)
    with torch.no_grad():  # larger weights: peaked distributions, no near-ties in greedy decoding
        for p in chunks.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return chunks, ps


def generation_worker(rank: int, world: int, layouts: list[dict], new_tokens: int) -> list[dict]:
    out = []
    for par in layouts:
        chunks, ps = sharp_model(par, world)
        cached = generate(chunks, ps, PROMPTS, GenerationConfig(max_new_tokens=new_tokens, temperature=0.0))
        full = greedy_by_full_forward(chunks, ps, PROMPTS, new_tokens)
        sampled = generate(chunks, ps, PROMPTS, GenerationConfig(max_new_tokens=new_tokens, temperature=0.9,
                                                                 top_p=0.9, top_k=40, seed=11))
        out.append({"cached": cached.tokens, "full": full, "sampled": sampled.tokens,
                    "sampled_logprobs": sampled.logprobs, "values_per_token": cached.cache_values_per_token_layer})
    return out


def demo_grpo(rank: int, overrides: list[str], patches: tuple = (), eval_problems: int = 0) -> tuple[dict, list]:
    """GRPO on the demo config with `patches` ((module, attribute, replacement), ...) in place while it
    runs: (grpo's result, rank 0's metrics rows)."""
    import json
    import os

    import r1mega.rl.grpo as grpo_module
    from r1mega.config import load_config

    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cfg = load_config(os.path.join(root, "configs", "tiny", "r1_zero_demo.yaml"), overrides)
        out = grpo_module.grpo(cfg, eval_problems=eval_problems)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
    rows = [json.loads(line) for line in open(os.path.join(cfg.train.run_dir, "metrics.jsonl"))] if rank == 0 else []
    return out, rows


def grpo_worker(rank: int, world: int, overrides: list[str]) -> dict:
    out, rows = demo_grpo(rank, overrides, eval_problems=8)
    return {"before": out["accuracy_before"], "after": out["accuracy_after"], "rows": rows}


def uneven_stop_worker(rank: int, world: int) -> dict:
    """EP spans the two DP ranks; rank 0's sequences stop at once, rank 1's never do, and rank 1
    has one more prompt. Both must keep running the same number of forwards (no hang)."""
    chunks, ps = sharp_model(dict(ep=2, etp=1), world)
    prompts = PROMPTS[:2] if rank == 0 else PROMPTS[:3]
    gen = GenerationConfig(max_new_tokens=5, temperature=0.0, stop=(lambda ids: True) if rank == 0 else None)
    r = generate(chunks, ps, prompts, gen)
    return {"generated": r.completion_mask.sum(1)}


def exact_grpo_worker(rank: int, world: int, overrides: list[str]) -> dict:
    """GRPO with rl.exact_rollouts, recording every loss call's ratio and TIS inputs (rank 0 rows)."""

    import r1mega.rl.update as update_module  # policy_gradients calls grpo_loss there

    seen = []
    loss = update_module.grpo_loss

    def spy(logp, old_logp, *args, **kwargs):
        terms = loss(logp, old_logp, *args, **kwargs)
        mask = args[2].bool()  # (ref, adv, mask, ...)
        rollout = kwargs.get("rollout_logp")
        seen.append({"ratio": terms.ratio.detach()[mask],
                     "tis": None if rollout is None else (old_logp - rollout).exp()[mask]})
        return terms

    out, rows = demo_grpo(rank, overrides, ((update_module, "grpo_loss", spy),))  # the probes read the steps only
    return {"rows": rows, "calls": seen, "accuracy_before": out["accuracy_before"]}


def grpo_bias_worker(rank: int, world: int, overrides: list[str], poison_step: int = 0) -> dict:
    """GRPO on the demo config, recording before each update's forward the MoE layers' routing biases
    and after it the expert loads it counted (this rank's); poison_step: that step's loss is NaN."""

    import r1mega.rl.update as update_module
    from r1mega.models.deepseek_v3.balance import moe_layers

    seen: dict = {"biases": [], "loads": [], "slots": []}
    gradients, loss = update_module.policy_gradients, update_module.grpo_loss

    def gradients_spy(cfg, ps, chunks, batch, *args, **kwargs):
        seen["chunks"] = chunks
        seen["biases"].append({n: m.gate.e_score_correction_bias.clone() for n, m in moe_layers(chunks)})
        sums = gradients(cfg, ps, chunks, batch, *args, **kwargs)
        seen["loads"].append({n: m.expert_load.clone() for n, m in moe_layers(chunks)})
        seen["slots"].append(batch.slots)
        return sums

    def loss_spy(*args, **kwargs):
        terms = loss(*args, **kwargs)
        if len(seen["loads"]) + 1 == poison_step:
            terms.loss = terms.loss * float("nan")
        return terms

    _, rows = demo_grpo(rank, overrides, ((update_module, "policy_gradients", gradients_spy),
                                          (update_module, "grpo_loss", loss_spy)))
    final = {n: m.gate.e_score_correction_bias.clone() for n, m in moe_layers(seen["chunks"])}
    return {"rows": rows, "biases": seen["biases"] + [final], "loads": seen["loads"], "slots": seen["slots"]}
