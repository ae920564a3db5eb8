"""Spawned-rank code for the speculative decoding tests (no transformers import)."""
from __future__ import annotations

from dataclasses import replace

from r1mega.inference.generate import GenerationConfig, generate
from rl_workers import sharp_model
from rollout_workers import long_tail_config, long_tail_rows


def greedy_config(**kw) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 20, "temperature": 0.0, "eos_id": 2, "block_size": 4,
                               "record_routing": True, **kw})


def speculative_layout_worker(rank: int, world: int, par: dict) -> dict:
    """This DP rank's uneven share of the long-tail rows: greedy plain, greedy speculative and
    sampled speculative (k=2) completions."""
    chunks, ps = sharp_model(par, world)
    prompts, keys = long_tail_rows()
    d, n = ps.r("dp"), len(prompts)
    cuts = [0, n // 2 + 3, n] if ps.dp == 2 else [0, n]  # DP ranks run out of rows at different steps
    lo, hi = cuts[d], cuts[d + 1]
    mine, rows = prompts[lo:hi], keys[lo:hi]
    spec = dict(speculative="mtp", draft_tokens=2)
    plain = generate(chunks, ps, mine, greedy_config(), rows=rows)
    greedy = generate(chunks, ps, mine, greedy_config(**spec), rows=rows)
    sampled = generate(chunks, ps, mine, replace(long_tail_config(), **spec), rows=rows)
    return {"keys": rows, "plain": plain.completions(), "greedy": greedy.completions(),
            "sampled": sampled.completions(), "forwards": greedy.forwards, "sampled_forwards": sampled.forwards}
