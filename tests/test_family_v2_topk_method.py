"""DeepSeek-V2 with `topk_method: noaux_tc` (V3's method): transformers' V2 router knows greedy and
group-limited greedy only (it fails on anything else), r1mega ran it as plain greedy softmax routing
with no selection bias, silently. Refused by key now."""
import pytest

from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf
from tests.tiny_hf import BASE


def _v2(**keys) -> dict:
    return {**BASE, "num_hidden_layers": 2, "model_type": "deepseek_v2", **keys}


def test_v2_with_another_topk_method_is_refused_by_key():
    with pytest.raises(ConfigError) as e:
        family_for_hf(_v2(topk_method="noaux_tc"))
    assert e.value.key.endswith("topk_method") and "noaux_tc" in e.value.message


@pytest.mark.parametrize("keys", [{}, {"topk_method": "greedy"},
                                  {"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1}])
def test_v2_topk_methods_transformers_runs_load(keys):
    assert family_for_hf(_v2(**keys))[1].topk_method == keys.get("topk_method", "greedy")
