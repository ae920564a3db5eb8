"""Hostile probe: a sampling temperature so small that logits / T overflows float32 (1e-40: the scaled
logits become inf, the log-softmax NaN). `r1mega generate` wrote the embedding's padding tokens as
completions (every id tied at inf) and GRPO would train on NaN log-probs. A temperature below
MIN_TEMPERATURE is refused by name; 0 stays greedy."""
from __future__ import annotations

import pytest

from r1mega.errors import ConfigError


@pytest.mark.parametrize("t", [1e-40, 1e-300, 5e-324])
def test_generation_refuses_a_vanishing_temperature(t):
    from r1mega.generation.sampling_rounds import SamplingParams

    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(samples=1, max_new_tokens=4, temperature=t).check()


def test_grpo_refuses_a_vanishing_temperature():
    from r1mega.config import build_config, validate, validate_rl
    from r1mega.models.deepseek_v3.config import ModelConfig

    cfg = validate(build_config(ModelConfig()), 1)
    cfg.data.synthetic = "addition"
    validate_rl(cfg, 1)  # the defaults pass
    cfg.rl.temperature = 1e-40
    with pytest.raises(ConfigError, match="rl.temperature"):
        validate_rl(cfg, 1)


def test_greedy_and_ordinary_temperatures_still_pass():
    from r1mega.config import MIN_TEMPERATURE
    from r1mega.generation.sampling_rounds import SamplingParams

    for t in (0.0, MIN_TEMPERATURE, 0.6, 1.0, 2.0):
        SamplingParams(samples=1, max_new_tokens=4, temperature=t).check()


def test_the_overflow_is_real():
    """Why: at 1e-40 the scaled logits are inf and the sampled log-probs NaN."""
    import torch

    from r1mega.inference.sampling import sample
    from r1mega.parallel.layout import single_process_state

    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    _, logprobs = sample(logits, single_process_state(), 1e-40)
    assert not torch.isfinite(logprobs).all()
