"""Spawned-rank code for the speculative decoding probes (no transformers import)."""
from __future__ import annotations

from r1mega.inference.generate import GenerationConfig, generate
from rl_workers import sharp_model

PROBE_PROMPTS = [[5, 6, 7], [10, 11, 12, 13], [3, 4, 5, 6, 7], [40], [7, 1, 2, 9, 9, 9, 9, 9, 3], [8, 8]]
SAMPLES = 2


def probe_rows():
    prompts = [p for p in PROBE_PROMPTS for _ in range(SAMPLES)]
    return prompts, list(range(len(prompts)))


def probe_configs() -> dict[str, GenerationConfig]:
    """Sampled with refill, a stop rule and a cut vocabulary support; greedy with EOS and k=4."""
    return {
        "sampled": GenerationConfig(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=20, seed=5, eos_id=2,
                                    stop=lambda ids: ids[-1] % 11 == 0, block_size=4, max_rows=3,
                                    speculative="mtp", draft_tokens=3),
        "greedy": GenerationConfig(max_new_tokens=12, temperature=0.0, eos_id=2, block_size=4, max_cache_tokens=24,
                                   speculative="mtp", draft_tokens=4, record_routing=True),
        "hot": GenerationConfig(max_new_tokens=10, temperature=1.7, block_size=4, seed=9, speculative="mtp",
                                draft_tokens=2),
    }


def speculative_probe_worker(rank: int, world: int, par: dict) -> dict:
    """This DP rank's uneven share of the rows under each probe config: keys, completions, log-probs."""
    import torch

    chunks, ps = sharp_model(par, world)
    prompts, keys = probe_rows()
    d, n = ps.r("dp"), len(prompts)
    cuts = [0, n // 2 + 3, n] if ps.dp == 2 else [0, n]
    lo, hi = cuts[d], cuts[d + 1]
    out = {"keys": keys[lo:hi]}
    for name, gen in probe_configs().items():
        r = generate(chunks, ps, prompts[lo:hi], gen, rows=torch.tensor(keys[lo:hi]))
        out[name] = (r.completions(), [r.logprobs[i][r.completion_mask[i]] for i in range(hi - lo)], r.forwards)
    return out
