"""Which ids end a completion when a model directory has no generation_config.json.

transformers' `generate` then takes the model config's `eos_token_id` (one id or a list:
GenerationConfig.from_model_config). r1mega stopped only at the tokenizer's EOS, so a Qwen3 whose
config.json listed [1, 56] ran every row to the length limit where transformers stopped at 56
(`r1mega generate --model HF_DIR`, and GRPO rollouts on the imported checkpoint).
"""
from __future__ import annotations

import json

from tokenizers import Tokenizer as HFTokenizer, models

from r1mega.data.tokenizer import Tokenizer


def _tokenizer_dir(path, **files) -> str:
    path.mkdir()
    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate("abcdefgh")}}
    HFTokenizer(models.WordLevel(vocab, unk_token="</s>")).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    for name, content in files.items():
        (path / name).write_text(json.dumps(content))
    return str(path)


def test_config_json_eos_list_ends_completions_without_generation_config(tmp_path):
    d = _tokenizer_dir(tmp_path / "hf", **{"config.json": {"model_type": "qwen3", "eos_token_id": [1, 7]}})
    assert Tokenizer(d).eos_ids == (1, 7)


def test_an_imported_checkpoint_reads_the_imported_config(tmp_path):
    d = _tokenizer_dir(tmp_path / "ckpt", **{"meta.json": {"kind": "import", "hf_config": {"eos_token_id": 9}}})
    assert Tokenizer(d).eos_ids == (1, 9)


def test_generation_config_wins_over_the_model_config(tmp_path):
    d = _tokenizer_dir(tmp_path / "hf", **{"config.json": {"eos_token_id": [1, 7]},
                                            "generation_config.json": {"eos_token_id": [1, 5]}})
    assert Tokenizer(d).eos_ids == (1, 5)


def test_no_listed_ids_leaves_the_tokenizer_eos(tmp_path):
    d = _tokenizer_dir(tmp_path / "hf", **{"config.json": {"model_type": "llama"}})
    assert Tokenizer(d).eos_ids == (1,)
