"""DeepSeek-V2 with `mlp_bias: true`: transformers gives the dense MLPs and shared experts biases;
r1mega's DeepSeek MLPs have none. The key must be refused by name wherever the config is read
(verify-hf ran and FAILed with a logit diff of 2.1, `generate --model HF_DIR` sampled from the
model without its biases), never silently dropped."""
import pytest
import torch

from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf
from tests.tiny_hf import make_hf_model


def test_v2_mlp_bias_is_refused_by_key(tmp_path):
    hf = make_hf_model("DeepseekV2", mlp_bias=True)
    assert any(n.endswith("mlp.gate_proj.bias") for n, _ in hf.named_parameters())  # transformers uses them
    hf.save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as e:
        family_for_hf(str(tmp_path))
    assert "mlp_bias" in str(e.value) and "wrong type" not in str(e.value)


def test_v2_verify_hf_refuses_instead_of_failing(tmp_path, capsys):
    from r1mega.verify_hf import main

    make_hf_model("DeepseekV2", mlp_bias=True).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="mlp_bias"):
        main(["--hf-dir", str(tmp_path), "--seq-length", "8"])


def test_v2_and_v32_without_used_mlp_bias_still_load(tmp_path):
    make_hf_model("DeepseekV2", mlp_bias=False).save_pretrained(tmp_path / "v2")
    assert family_for_hf(str(tmp_path / "v2"))[0].name == "deepseek_v3"
    # transformers' DeepSeek-V3.2 reads mlp_bias but builds no bias: nothing to refuse there
    import transformers

    from tests.tiny_hf import BASE

    cfg = transformers.DeepseekV32Config(**BASE, n_group=2, topk_group=1, index_n_heads=4, index_head_dim=16,
                                         index_topk=5, mlp_bias=True)
    torch.manual_seed(0)
    transformers.DeepseekV32ForCausalLM(cfg).save_pretrained(tmp_path / "v32")
    assert family_for_hf(str(tmp_path / "v32"))[0].name == "deepseek_v32"
