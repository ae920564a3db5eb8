"""Which layers have routed experts, as transformers reads a DeepSeek config.json: from
`first_k_dense_replace` on, every layer (V2/V3 ignore `moe_layer_freq`), and for V3.2 by
`mlp_layer_types`, which wins over `first_k_dense_replace`. r1mega honoured moe_layer_freq and
ignored mlp_layer_types, so such checkpoints failed on a 'missing tensor' that did not say why (and
an export of a moe_layer_freq model wrote a config transformers builds another model from)."""
import json

import pytest

from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf
from tests.tiny_hf import BASE, make_hf_model

V32 = dict(n_group=2, topk_group=1, index_n_heads=4, index_head_dim=16, index_topk=5)


def _config(model_type: str, **keys) -> dict:
    return {**BASE, "num_hidden_layers": 4, "model_type": model_type, "n_group": 2, "topk_group": 1, **keys}


@pytest.mark.parametrize("model_type", ["deepseek_v3", "deepseek_v2", "deepseek_v32"])
def test_moe_layer_freq_other_than_1_is_refused_by_key(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps(_config(model_type, moe_layer_freq=2)))
    with pytest.raises(ConfigError) as e:
        family_for_hf(str(tmp_path))
    assert e.value.key.endswith("moe_layer_freq")


def test_v32_mlp_layer_types_decide_the_dense_layers():
    cfg = _config("deepseek_v32", first_k_dense_replace=3, mlp_layer_types=["dense", "sparse", "sparse", "sparse"])
    m = family_for_hf(cfg)[1]
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, True, True]


def test_v32_mlp_layer_types_r1mega_cannot_build_are_refused_by_key():
    for types in (["dense", "sparse", "dense", "sparse"], ["dense", "sparse"], ["dense", "moe", "sparse", "sparse"]):
        with pytest.raises(ConfigError) as e:
            family_for_hf(_config("deepseek_v32", mlp_layer_types=types))
        assert e.value.key.endswith("mlp_layer_types")


def test_v32_mlp_layer_types_win_over_first_k_dense_replace_as_in_transformers(tmp_path):
    from r1mega.verify_hf import main as verify_hf

    hf = make_hf_model("DeepseekV32", num_hidden_layers=3, first_k_dense_replace=2, index_n_heads=16, **{
        k: v for k, v in V32.items() if k != "index_n_heads"}, mlp_layer_types=["dense", "sparse", "sparse"])
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["first_k_dense_replace"] == 2  # says 2, builds 1
    assert verify_hf(["--hf-dir", str(tmp_path), "--seq-length", "16"]) == 0
