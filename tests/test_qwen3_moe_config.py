"""Qwen3-MoE config rules: a config.json or a layout the model cannot run is refused early, naming the
key."""
import pytest

from r1mega.config import ParallelConfig, build_config, validate
from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf

BASE = {"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "moe_intermediate_size": 16, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_experts": 6, "num_experts_per_tok": 2, "mlp_only_layers": [0]}


@pytest.mark.parametrize("change, key", [
    ({"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
    ({"mlp_only_layers": "0"}, "mlp_only_layers"),
    ({"num_hidden_layers": None}, "config.json"),
])
def test_config_json_refused_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        family_for_hf({**BASE, **change})


def test_transformers_name_of_the_expert_count_is_read():
    hf = {k: v for k, v in BASE.items() if k != "num_experts"}
    assert family_for_hf({**hf, "num_local_experts": 4})[1].num_experts == 4
    assert family_for_hf(hf)[1].num_experts == 128  # transformers' default


@pytest.mark.parametrize("change, par, key", [
    ({}, dict(ep=4), "model.num_experts"),  # 6 experts over 4 EP ranks
    ({"num_experts_per_tok": 7}, dict(), "model.num_experts_per_tok"),
    ({"mlp_only_layers": [4]}, dict(), "model.mlp_only_layers"),
    ({"num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 8}, dict(tp=4), "model.num_heads"),
    ({"num_experts": 0}, dict(ep=2), "parallel.ep"),
])
def test_layout_refused_naming_the_key(change, par, key):
    _, cfg = family_for_hf({**BASE, **change})
    with pytest.raises(ConfigError, match=key):
        world = par.get("tp", 1) * par.get("ep", 1)
        validate(build_config(cfg, ParallelConfig(**par)), world)
