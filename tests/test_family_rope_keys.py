"""A dense model's rope scaling without a key its kind needs (linear or YaRN without factor, Llama 3
without low/high_freq_factor; a missing original length defaults as in transformers, see
test_family_rope_precedence.py): transformers refuses such a rope, r1mega built the model and
ended in a KeyError traceback from the rotary. Refused by key now, before anything is built."""
import json

import pytest

from r1mega.errors import ConfigError
from r1mega.verify_hf import main as verify_hf

DENSE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("arch, rope, missing", [
    ("llama", {"rope_type": "linear"}, "factor"),
    ("qwen2", {**LLAMA3, "high_freq_factor": None}, "high_freq_factor"),
    ("qwen3", {k: v for k, v in LLAMA3.items() if k != "low_freq_factor"}, "low_freq_factor"),
    ("llama", {k: v for k, v in YARN.items() if k != "factor"}, "factor"),
    ("qwen2", {**YARN, "factor": "4"}, "factor"),
])
def test_rope_missing_a_key_its_kind_needs_is_refused_by_key(tmp_path, arch, rope, missing):
    rope = {k: v for k, v in rope.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(
        {**DENSE, "model_type": arch, "rope_parameters": {**rope, "rope_theta": 10000.0}}))
    with pytest.raises(ConfigError) as e:
        verify_hf(["--hf-dir", str(tmp_path), "--seq-length", "8"])
    assert e.value.key.endswith(f"rope_scaling.{missing}")
