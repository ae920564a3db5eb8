"""DeepSeek-V2 with `rope_interleave: false` in config.json: transformers' V2 always rotates
interleaved pairs (the key is V3's), r1mega built the half-split rotary from it: verify-hf FAILed at
a logit diff of 0.43 and import/generate ran another model silently. Refused by key now."""
import json

import pytest

from r1mega.errors import ConfigError
from r1mega.models.family import family_for_hf
from tests.tiny_hf import BASE


def _v2(**keys) -> dict:
    return {**BASE, "num_hidden_layers": 2, "model_type": "deepseek_v2", **keys}


def test_v2_half_split_rope_is_refused_by_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_v2(rope_interleave=False)))
    with pytest.raises(ConfigError) as e:
        family_for_hf(str(tmp_path))
    assert e.value.key.endswith("rope_interleave")


@pytest.mark.parametrize("keys", [{}, {"rope_interleave": True}])
def test_v2_interleaved_rope_loads(keys):
    assert family_for_hf(_v2(**keys))[1].rope_interleave is True


def test_v3_half_split_rope_is_still_read():  # transformers' V3 honours the key (README: half-split rope)
    cfg = {**_v2(rope_interleave=False), "model_type": "deepseek_v3", "n_group": 2, "topk_group": 1}
    assert family_for_hf(cfg)[1].rope_interleave is False
