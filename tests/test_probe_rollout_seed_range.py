"""Hostile probe: sampling seeds past 2^64 / 1,000,003 (~1.8e13).

`--seed` and the config's `seed` take any integer >= 0. The continuous engine hashes the noise keys
on the host (`row_keys_host`, arithmetic mod 2^64), but the static engine and speculative decoding
hash them as int64 tensors (`row_keys`), where seed x 1,000,003 did not fit: `r1mega generate --seed
4611686018427387904 --speculative mtp` died with `OverflowError: int too big to convert`, while the
same command without speculation sampled. Both hashes must give the same keys for every seed."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from r1mega.inference.generate import GenerationConfig, generate, generate_static  # noqa: E402
from r1mega.inference.sampling import row_keys, row_keys_host  # noqa: E402
from rl_workers import sharp_model  # noqa: E402

SEEDS = [0, 7, 2 ** 43 + 5, 18_446_744_073_709 + 1, 2 ** 62, 2 ** 64 - 1, 2 ** 70 + 3]


@pytest.mark.parametrize("seed", SEEDS)
def test_tensor_and_host_keys_agree_for_any_seed(seed):
    steps, rows = [0, 1, 5, 1000], [3, -2, 2 ** 62, 17]
    assert torch.equal(row_keys(seed, torch.tensor(steps), torch.tensor(rows)), row_keys_host(seed, steps, rows))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sharp_model({}, 1)


@pytest.mark.parametrize("seed", [2 ** 62, 2 ** 70 + 3])
def test_large_seeds_sample_alike_in_every_engine(model, seed):
    chunks, ps = model
    prompts = [[5, 6, 7], [40], [5, 6, 7]]
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=seed)
    plain = generate(chunks, ps, prompts, gen)
    static = generate_static(chunks, ps, prompts, gen)
    assert torch.equal(plain.tokens, static.tokens)
    spec = generate(chunks, ps, prompts, GenerationConfig(**{**gen.__dict__, "speculative": "mtp", "draft_tokens": 2}))
    assert spec.completion_mask.sum(1).tolist() == [6, 6, 6]
    # (the keys still depend on the seed)
    other = generate(chunks, ps, prompts, GenerationConfig(**{**gen.__dict__, "seed": seed + 1}))
    assert not torch.equal(plain.tokens, other.tokens)
