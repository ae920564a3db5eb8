"""Config-only parameter counts equal what an instantiated model holds."""
import pytest

from r1mega.config import Config, ModelConfig, validate
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.models.deepseek_v3.params import count_params
from r1mega.parallel.layout import single_process_state


@pytest.mark.parametrize("overrides", [
    {}, {"q_lora_rank": None, "attention_bias": True}, {"num_mtp_layers": 2, "first_k_dense_replace": 0},
    {"n_shared_experts": 2, "num_experts_per_tok": 3, "num_layers": 3, "first_k_dense_replace": 2},
])
def test_counts_match_instantiated_model(overrides):
    cfg = validate(Config(model=ModelConfig(**{"num_mtp_layers": 1, **overrides})), 1).model
    model = DeepseekV3(cfg, single_process_state())
    n_mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    n_main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    counts = count_params(cfg)
    assert counts["total"] == n_main
    assert counts["mtp"] == n_mtp
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts.w_" in n and not n.startswith("mtp."))
    inactive = experts * (cfg.n_routed_experts - cfg.num_experts_per_tok) // cfg.n_routed_experts
    assert counts["active"] == n_main - inactive
