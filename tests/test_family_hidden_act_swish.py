"""`hidden_act: "swish"` is SiLU to transformers (ACT2FN["swish"] is torch's SiLU), so a config.json
saying it loads there as the same model as "silu"; r1mega refused it ("only silu is supported, got
'swish'") in every family. Read as silu now; other activations are still refused by key."""
import pytest

from r1mega.config import build_config, validate
from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf

DENSE = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
QWEN3_MOE = {**DENSE, "model_type": "qwen3_moe", "moe_intermediate_size": 12, "num_experts": 4,
             "num_experts_per_tok": 2}
DEEPSEEK = {"model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 40,
            "moe_intermediate_size": 10, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 16,
            "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
            "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
            "first_k_dense_replace": 1}


@pytest.mark.parametrize("hf", [DENSE, {**DENSE, "model_type": "qwen2"}, {**DENSE, "model_type": "qwen3"},
                                QWEN3_MOE, DEEPSEEK, {**DEEPSEEK, "model_type": "deepseek_v2"}],
                         ids=lambda h: h["model_type"])
def test_swish_is_read_as_silu(hf):
    family, cfg = family_for_hf({**hf, "hidden_act": "swish"})
    assert cfg.hidden_act == "silu"
    validate(build_config(cfg), 1)
    assert family_for_hf(hf)[1] == cfg  # the same model as "silu" (the default)


def test_other_activations_are_still_refused_by_key():
    _, cfg = family_for_hf({**DENSE, "hidden_act": "gelu"})
    with pytest.raises(ConfigError, match="hidden_act"):
        validate(build_config(cfg), 1)
