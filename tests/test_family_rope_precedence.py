"""How a config.json's rope keys combine, as transformers 5 standardises them: the rope dict's own
`rope_theta` wins over a top-level one (r1mega took the top-level: logit diff 0.027), and a Llama 3 /
YaRN scaling without `original_max_position_embeddings` takes max_position_embeddings (r1mega ended in a
KeyError traceback), and a top-level key of that name wins over the dict's once transformers builds the
model (its AutoConfig alone shows the dict's value; r1mega read that: logit diffs 0.08-0.8)."""
import json

import pytest
import transformers

from r1mega.models.family import family_for_hf
from r1mega.verify_hf import main as verify_hf
from tests.tiny_hf import randomize

DENSE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def _save(tmp_path, arch: str, **extra) -> str:
    """A tiny random model saved by transformers, then its config.json given `extra` keys."""
    cls = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[arch]
    model = getattr(transformers, f"{cls}ForCausalLM")(getattr(transformers, f"{cls}Config")(**DENSE))
    randomize(model)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **extra}))
    return str(tmp_path)


def _rope(path: str) -> tuple[float, dict]:
    """(ours, transformers') (theta, rope dict): transformers' as its model reads them once built (a
    config's rope keys are standardised again at model construction)."""
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path)).config
    ours = family_for_hf(path)[1]
    return (ours.rope_theta, ours.rope_scaling), (hf.rope_parameters["rope_theta"], hf.rope_parameters)


def test_the_rope_dicts_own_theta_wins(tmp_path):
    path = _save(tmp_path, "llama", rope_theta=777.0,
                 rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 500.0})
    (theta, _), (hf_theta, _) = _rope(path)
    assert theta == hf_theta == 500.0
    assert verify_hf(["--hf-dir", path, "--seq-length", "16"]) == 0


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0},
                                  {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0}])
def test_original_positions_default_to_max_position_embeddings(tmp_path, rope):
    path = _save(tmp_path, "qwen2", rope_parameters={**rope, "rope_theta": 10000.0})
    (_, scaling), (_, hf) = _rope(path)
    assert scaling["original_max_position_embeddings"] == hf["original_max_position_embeddings"] == 256
    assert verify_hf(["--hf-dir", path, "--seq-length", "16"]) == 0


@pytest.mark.parametrize("in_dict, expected", [(64, 32), (None, 32)])
def test_a_top_level_original_positions_key_counts_as_transformers_counts_it(tmp_path, in_dict, expected):
    rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    if in_dict is not None:
        rope["original_max_position_embeddings"] = in_dict
    path = _save(tmp_path, "llama", original_max_position_embeddings=32, rope_parameters=rope)
    (_, scaling), (_, hf) = _rope(path)
    assert scaling["original_max_position_embeddings"] == hf["original_max_position_embeddings"] == expected


def _deepseek_v3(tmp_path, **extra) -> str:
    from tests.tiny_hf import make_hf_model

    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0,
            "mscale_all_dim": 1.0, "rope_theta": 10000.0}
    make_hf_model(qk_rope_head_dim=16, n_group=2, topk_group=1, rope_parameters=rope).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **extra}))
    return str(tmp_path)


@pytest.mark.parametrize("arch, rope", [
    ("llama", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    ("qwen2", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 128}),
    ("deepseek_v3", None)])
def test_a_top_level_original_positions_key_gives_transformers_logits(tmp_path, arch, rope):
    """Built as transformers builds it, the model reads the top-level key (logit diffs 0.08-0.8 before)."""
    if arch == "deepseek_v3":
        path = _deepseek_v3(tmp_path, original_max_position_embeddings=16)
    else:
        path = _save(tmp_path, arch, original_max_position_embeddings=16,
                     rope_parameters={**rope, "rope_theta": 10000.0})
    (_, scaling), (_, hf) = _rope(path)
    assert scaling["original_max_position_embeddings"] == hf["original_max_position_embeddings"] == 16
    assert verify_hf(["--hf-dir", path, "--seq-length", "48"]) == 0
