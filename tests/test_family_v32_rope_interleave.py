"""DeepSeek-V3.2's MLA always rotates interleaved pairs in transformers (its config has no
`rope_interleave`): a config.json saying false was read as half-split rotary, a model other than the
one transformers loads (verify-hf: logits off by 2.7 on a tiny checkpoint). Now refused by key."""
import pytest

from r1mega.errors import ConfigError
from r1mega.models.deepseek_v32.config import DSAConfig, validate_keys
from r1mega.models.family import family_for_hf

HF = {"model_type": "deepseek_v32", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 40,
      "moe_intermediate_size": 10, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 16,
      "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 4,
      "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
      "index_n_heads": 4, "index_head_dim": 16, "index_topk": 4}


def test_v32_config_json_with_half_split_rotary_is_refused_by_key():
    with pytest.raises(ConfigError, match="rope_interleave"):
        family_for_hf({**HF, "rope_interleave": False})


@pytest.mark.parametrize("extra", [{}, {"rope_interleave": True}])
def test_v32_config_json_interleaved_is_read(extra):
    family, cfg = family_for_hf({**HF, **extra})
    assert family.name == "deepseek_v32" and cfg.rope_interleave is True and cfg.index_n_heads == 4


def test_v32_model_section_with_half_split_rotary_is_refused():
    # an export drops the key (transformers has none), so such a model would come back interleaved
    cfg = DSAConfig(q_lora_rank=16, index_n_heads=2, index_head_dim=16, index_topk=4, rope_interleave=False)
    with pytest.raises(ConfigError, match="model.rope_interleave"):
        validate_keys(cfg)
    validate_keys(DSAConfig(q_lora_rank=16, index_n_heads=2, index_head_dim=16, index_topk=4))
