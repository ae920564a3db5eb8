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


def test_the_config_seed_is_bounded_by_name_and_initialises_at_any_value():
    """`seed` seeds torch's 64-bit generators (and each weight's: seed x 1,000,003 + a name hash):
    `r1mega grpo ... seed=20000000000000` died in the weight initialisation with 'ValueError: Overflow
    when unpacking long long', seed=2^64 in torch.manual_seed; now every seed below 2^64 initialises
    and a larger one is refused by key."""
    from r1mega.config import Config, ConfigError, ModelConfig, validate
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.setup import build_chunks, init_weights

    with pytest.raises(ConfigError, match="'seed'"):
        validate(Config(seed=2 ** 64), 1)
    cfg = validate(Config(model=ModelConfig(vocab_size=64, num_layers=2)), 1)
    firsts = []
    for seed in (0, 20_000_000_000_000, 2 ** 64 - 1):
        validate(Config(seed=seed), 1)
        chunks = build_chunks(cfg, single_process_state())
        init_weights(chunks, seed)
        firsts.append(next(chunks.parameters()).detach().clone())
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])
