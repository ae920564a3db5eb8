"""verify-hf compares each gradient relative to its own largest value; a gradient that is analytically
zero (a top-1 router renormalised to weight 1: d(s/s)/ds) is float32 rounding in both implementations
(1e-10 against the model's 0.2), and was reported as a 0.8-3.9x difference: `verify-hf` said FAIL on a
correct Qwen3-MoE / DeepSeek-V3 import with num_experts_per_tok 1 and norm_topk_prob. Each tensor is now
measured against at least GRAD_FLOOR of the model's largest gradient."""
import json

import torch

from r1mega import verify_hf
from r1mega.verify_hf import GRAD_FLOOR, grad_diff


def test_rounding_of_a_zero_gradient_is_not_a_difference():
    ref = {"big": torch.full((4, 4), 0.5), "router": torch.tensor([[2e-10, -1e-10], [0.0, 1e-10]])}
    ours = {"big": ref["big"].clone(), "router": torch.tensor([[-3e-10, 0.0], [1e-10, 4e-10]])}
    worst, _ = grad_diff(ours, ref)
    assert worst < 1e-4


def test_a_wrong_small_gradient_is_still_caught():
    ref = {"big": torch.full((4, 4), 0.5), "bias": torch.tensor([1e-4, -2e-4])}  # 4e-4 of the largest
    worst, name = grad_diff({"big": ref["big"].clone(), "bias": torch.zeros(2)}, ref)
    assert name == "bias" and worst > 0.5
    # below the floor a difference is scaled by the floor, not lost
    ref["tiny"] = torch.tensor([1e-8])
    worst, name = grad_diff({"big": ref["big"], "bias": ref["bias"], "tiny": torch.tensor([1e-8 + 1e-6])}, ref)
    assert name == "tiny" and abs(worst - 1e-6 / (GRAD_FLOOR * 0.5)) < 1e-3
    assert grad_diff({}, ref)[0] == 1.0  # a missing gradient


def test_verify_hf_passes_a_top1_renormalised_qwen3_moe(tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen3_moe", vocab_size=64, hidden_size=32, intermediate_size=44,
                               moe_intermediate_size=12, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, num_experts=4, num_experts_per_tok=1, norm_topk_prob=True,
                               max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if p.dim() == 1 else
                    (0.3 if "proj" in name or "gate" in name else 0.08) * torch.randn(p.shape, generator=g))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_experts_per_tok"] == 1
    rc = verify_hf.main(["--hf-dir", str(tmp_path), "--seq-length", "40"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out and "max_abs_logit_diff" in out
