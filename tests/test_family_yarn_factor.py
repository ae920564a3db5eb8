"""DeepSeek YaRN without `factor`: the softmax scale reads it (mscale_all_dim), so verify-hf, import
and every command building the model ended in a KeyError traceback; transformers itself refuses
such a rope ('Missing required keys ... factor'). Refused by key now, before anything is built."""
import json

import pytest

from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf
from tests.tiny_hf import BASE

YARN = {"rope_type": "yarn", "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 1.0,
        "rope_theta": 10000.0}


@pytest.mark.parametrize("model_type", ["deepseek_v3", "deepseek_v32"])
def test_yarn_without_factor_is_refused_by_key(tmp_path, model_type):
    cfg = {**BASE, "model_type": model_type, "n_group": 2, "topk_group": 1, "rope_parameters": YARN}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from r1mega.verify_hf import main as verify_hf

    with pytest.raises(ConfigError) as e:
        verify_hf(["--hf-dir", str(tmp_path), "--seq-length", "8"])
    assert "factor" in e.value.key


def test_yarn_with_factor_still_builds():
    cfg = {**BASE, "model_type": "deepseek_v3", "n_group": 2, "topk_group": 1,
           "rope_parameters": {**YARN, "factor": 4.0}}
    assert family_for_hf(cfg)[1].rope_scaling["factor"] == 4.0
