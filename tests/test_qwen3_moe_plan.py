"""`r1mega plan` for Qwen3-MoE: the parameters a GPU of each stage holds are what the built stages
hold, the KV cache is the GQA heads', and the activation bytes are what a full-width layer measurably
leaves for backward (read from two narrower widths)."""
from types import SimpleNamespace

import pytest
import torch

from r1mega.models.family import family_for_hf, family_named
from test_qwen3_moe_config import BASE


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


def test_activation_bytes_read_from_narrow_widths_are_a_full_width_layers():
    from r1mega.models.activation_memory import saved_bytes
    from r1mega.models.qwen3_moe.model import Qwen3MoeDecoderLayer
    from r1mega.models.rope import RotaryEmbedding
    from r1mega.parallel.layout import single_process_state

    family = family_named("qwen3_moe")
    _, m = family_for_hf({**BASE, "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 8,
                          "head_dim": 16, "intermediate_size": 384, "moe_intermediate_size": 64, "num_experts": 32,
                          "num_experts_per_tok": 4, "num_hidden_layers": 2, "mlp_only_layers": [0]})
    T = 64
    rope = RotaryEmbedding(m.head_size, m.rope_theta, None, m.max_position_embeddings, interleave=False)
    cos, sin = rope.cos_sin(torch.arange(T))
    direct = 0.0
    for i in (0, 1):  # one dense, one MoE layer at full width
        layer = Qwen3MoeDecoderLayer(m, single_process_state(), i).train()
        h = torch.randn(T, 1, m.hidden_size, requires_grad=True)
        direct += saved_bytes(lambda: layer(h, rope, cos, sin).sum(), layer) / T + 4 * m.hidden_size
    p = SimpleNamespace(tp=1, pp=1, pp_layers=None, ep=1, expert_tp=1, cp=1, sp=False)
    planned = family.planner.activation_bytes(m, p, 0, 1, T, 4, "none", None) / T
    assert planned == pytest.approx(direct, rel=0.03)
