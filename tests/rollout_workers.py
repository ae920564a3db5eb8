"""Spawned-rank code for the rollout engine tests (no transformers import)."""
from __future__ import annotations

import torch

from r1mega.inference.generate import GenerationConfig, generate
from rl_workers import sharp_model

# long-tailed: rows stop at a token that some samples hit early and others late or never
LONG_TAIL_PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10], [40, 41, 42, 43], [7, 1, 2]]
SAMPLES = 3


def long_tail_config(**kw) -> GenerationConfig:
    base = dict(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=17, eos_id=2,
                stop=lambda ids: ids[-1] % 7 == 0, record_routing=True, block_size=4)
    return GenerationConfig(**{**base, **kw})


def long_tail_rows():
    """(prompt, key) of every sample: the samples of a prompt are adjacent rows, keyed by global index."""
    prompts = [p for p in LONG_TAIL_PROMPTS for _ in range(SAMPLES)]
    return prompts, torch.arange(len(prompts))


def layout_samples_worker(rank: int, world: int, par: dict, gen_kw: dict | None = None) -> dict:
    """This DP rank's contiguous share of the long-tail rows, generated under `par` (gen_kw: changes
    to the generation config)."""
    chunks, ps = sharp_model(par, world)
    prompts, keys = long_tail_rows()
    d, n = ps.r("dp"), len(prompts)
    cuts = [0, n // 2 + 3, n] if ps.dp == 2 else [0, n]  # uneven shares: DP ranks run out at different steps
    lo, hi = cuts[d], cuts[d + 1]
    r = generate(chunks, ps, prompts[lo:hi], long_tail_config(**(gen_kw or {})), rows=keys[lo:hi])
    return {"keys": keys[lo:hi], "completions": r.completions(), "logprobs": r.logprobs[r.completion_mask],
            "forwards": r.forwards, "routing": r.routing, "prefill_tokens": r.prefill_tokens}


def budgeted_rollout(chunks, ps, gen: GenerationConfig) -> dict:
    """The long-tail rows under `gen` (a cache budget), with what the engine saw: its pool's peak in
    tokens (each stage's main cache; speculative: the draft layer's is apart), preemptions, and how
    often a pipelined segment began (under PP) against the rows it admitted."""
    from r1mega.inference.continuous import ContinuousBatcher

    engines = []
    real_run, real_pipelined = ContinuousBatcher.run, ContinuousBatcher.decode_pipelined

    def run(self):
        engines.append(self)
        self.segments = 0
        real_run(self)

    def decode_pipelined(self, pending):
        self.segments += 1
        real_pipelined(self, pending)

    ContinuousBatcher.run, ContinuousBatcher.decode_pipelined = run, decode_pipelined
    try:
        prompts, keys = long_tail_rows()
        r = generate(chunks, ps, prompts, gen, rows=keys)
    finally:
        ContinuousBatcher.run, ContinuousBatcher.decode_pipelined = real_run, real_pipelined
    e = engines[0]
    return {"completions": r.completions(), "logprobs": r.logprobs[r.completion_mask], "routing": r.routing,
            "peak": e.pool.peak * e.bs, "preemptions": r.preemptions, "segments": e.segments,
            "admissions": e.admissions, "accepted": r.draft_accepted, "blocks_left": e.pool.used}


def budget_layouts_worker(rank: int, world: int, cases: list) -> list[dict]:
    """Each (layout, generation config changes) of `cases` on these ranks: `budgeted_rollout`."""
    out = []
    for par, gen_kw in cases:
        chunks, ps = sharp_model(par, world)
        out.append(budgeted_rollout(chunks, ps, long_tail_config(**gen_kw)))
    return out
