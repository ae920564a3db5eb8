"""A `model.<key>` of another family than the section's: the error says whose key it is and how to name
the family. `r1mega sft ... train.load=V32_CKPT model.dsa_stage=sparse` (no `model.family`) said only
"Key 'dsa_stage' not in 'ModelConfig'", with the V3.2 checkpoint named by train.load."""
from __future__ import annotations

import pytest

from r1mega.config import load_config
from r1mega.errors import ConfigError


def test_a_v32_key_without_the_family_names_the_family():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.dsa_stage=sparse"])
    assert e.value.key == "model.dsa_stage"
    assert "it is a key of family deepseek_v32" in e.value.message
    assert "deepseek_v3's (the default)" in e.value.message
    assert "model.family=deepseek_v32" in e.value.message
    assert load_config(None, ["model.family=deepseek_v32", "model.dsa_stage=sparse"]).model.dsa_stage == "sparse"


def test_a_deepseek_key_under_a_dense_section_names_its_families():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.family=dense", "model.kv_lora_rank=8"])
    assert "deepseek_v3" in e.value.message and "while this model: section is dense's:" in e.value.message


def test_an_unknown_key_of_no_family_is_named_as_before():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.bogus=1"])
    assert e.value.key == "model.bogus" and "family" not in e.value.message


def test_a_bad_value_of_the_sections_own_key_blames_the_value_not_the_family():
    # `model.hidden_size=abc` said hidden_size "is a key of family deepseek_v32 / dense / qwen3_moe, while this
    # model: section is deepseek_v3's" and suggested model.family=deepseek_v32: deepseek_v3 has the key too
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.hidden_size=abc"])
    assert e.value.key == "model.hidden_size" and "'abc'" in e.value.message and "family" not in e.value.message
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.family=dense", "model.num_layers=x"])
    assert e.value.key == "model.num_layers" and "family" not in e.value.message
