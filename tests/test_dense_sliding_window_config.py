"""Sliding-window keys of a dense config.json, read as transformers reads them.

Qwen2/Qwen3 slide only in the layers `layer_types` names `sliding_attention` (by default those from
`max_window_layers` on, transformers' default 28), and only with `use_sliding_window` and a window;
Llama has no window at all. r1mega refused every `use_sliding_window: true`, also configs whose
attention transformers runs in full everywhere; a layer that really slides is still refused by name.
"""
from __future__ import annotations

import pytest
from transformers import Qwen2Config, Qwen3Config

from r1mega.errors import ConfigError
from r1mega.models.dense.config import DenseConfig

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def _hf(cls, **over) -> dict:
    """config.json as transformers 5 writes it (with its computed layer_types)."""
    return cls(**{**BASE, **over}).to_dict()


@pytest.mark.parametrize("cls", [Qwen2Config, Qwen3Config])
@pytest.mark.parametrize("over", [
    dict(use_sliding_window=True, sliding_window=8, max_window_layers=4),     # no layer from 4 on
    dict(use_sliding_window=True, sliding_window=8),                          # default max_window_layers 28
    dict(use_sliding_window=True, sliding_window=256, max_window_layers=0),   # a window over every position
    dict(use_sliding_window=True, sliding_window=None, max_window_layers=0),  # no window
])
def test_configs_transformers_runs_in_full_attention_are_read(cls, over):
    hf = _hf(cls, **over)
    assert "sliding_attention" not in hf["layer_types"] or over["sliding_window"] == 256
    cfg = DenseConfig.from_hf(hf)
    assert cfg.num_layers == 4
    # without the layer_types transformers 5 adds, from max_window_layers as transformers computes them
    hf.pop("layer_types")
    DenseConfig.from_hf(hf)


@pytest.mark.parametrize("drop_types", [False, True])
def test_a_layer_that_slides_is_refused_by_name(drop_types):
    hf = _hf(Qwen2Config, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert hf["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 2
    if drop_types:
        hf.pop("layer_types")
    with pytest.raises(ConfigError, match=r"layers \[2, 3\] attend within a sliding window of 8 tokens") as e:
        DenseConfig.from_hf(hf)
    assert e.value.key.endswith("use_sliding_window")


def test_llama_has_no_sliding_window():
    # transformers' Llama ignores the keys (a config copied from a Qwen/Mistral model may carry them)
    hf = {**BASE, "model_type": "llama", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}
    assert DenseConfig.from_hf(hf).arch == "llama"
