"""A DeepSeek config.json's `scoring_func` that transformers does not compute: its DeepSeek-V3 (and
V3.2) router always scores with sigmoid, its V2 router with softmax. r1mega built a softmax router for
a deepseek_v3 config saying softmax (verify-hf: logit diff 1.4; import and generate silently ran
another model than transformers loads) and named only a missing tensor for a sigmoid V2; both are now
refused by key, and the spellings real checkpoints carry still load."""
import json

import pytest

from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf
from tests.tiny_hf import BASE


def _config(model_type: str, **keys) -> dict:
    return {**BASE, "num_hidden_layers": 2, "model_type": model_type, "n_group": 2, "topk_group": 1, **keys}


@pytest.mark.parametrize("model_type, scoring", [("deepseek_v3", "softmax"), ("deepseek_v32", "softmax"),
                                                 ("deepseek_v2", "sigmoid")])
def test_a_scoring_func_transformers_does_not_compute_is_refused(tmp_path, model_type, scoring):
    (tmp_path / "config.json").write_text(json.dumps(_config(model_type, scoring_func=scoring)))
    with pytest.raises(ConfigError) as e:
        family_for_hf(str(tmp_path))
    assert "scoring_func" in e.value.key and scoring in e.value.message


@pytest.mark.parametrize("model_type, scoring", [("deepseek_v3", "sigmoid"), ("deepseek_v32", "sigmoid"),
                                                 ("deepseek_v2", "softmax"), ("deepseek_v3", None)])
def test_the_scoring_funcs_of_real_checkpoints_load(model_type, scoring):
    keys = {} if scoring is None else {"scoring_func": scoring}
    _, cfg = family_for_hf(_config(model_type, **keys))
    assert cfg.scoring_func == ("softmax" if model_type == "deepseek_v2" else "sigmoid")
