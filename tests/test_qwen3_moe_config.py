"""Qwen3-MoE config rules: a config.json or a layout the model cannot run is refused early, naming the
key; the plan's per-GPU parameters are what the built stages hold."""
from types import SimpleNamespace

import pytest

from r1mega.config import ParallelConfig, build_config, validate
from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf, family_named

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


@pytest.mark.parametrize("ep", [1, 2])
def test_plan_holds_what_the_stages_hold(ep):
    from r1mega.parallel.layout import single_process_state

    family = family_named("qwen3_moe")
    _, cfg = family_for_hf({**BASE, "decoder_sparse_step": 2, "mlp_only_layers": [3], "tie_word_embeddings": True})
    p = SimpleNamespace(tp=1, pp=2, pp_layers=None, ep=ep, expert_tp=1, cp=1, sp=False)
    for stage in range(2):
        built = family.build_stage(cfg, single_process_state(), stage=stage, num_stages=2)
        experts = sum(q.numel() for n, q in built.named_parameters() if ".experts." in n)
        dense, expert = family.planner.stage_params(cfg, p, stage)
        assert (dense, expert * ep) == (sum(q.numel() for q in built.parameters()) - experts, experts)
    kv = family.planner.kv_cache_bytes(cfg, p, 100, 2)
    assert kv == {"gqa_heads": 100 * 2 * 2 * 2 * 2 * 8}  # tokens x layers/stage x bytes x (k, v) x heads x dim
