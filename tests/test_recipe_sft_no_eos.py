"""SFT with data.sft_template=raw closes each reply with the tokenizer's EOS token; a tokenizer.json
with no EOS (none in tokenizer_config.json or generation_config.json) crashed in packing with a
TypeError (None as a token id). It is refused by key, naming the tokenizer."""
import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from r1mega.data.sft import SFTData
from r1mega.data.tokenizer import load_tokenizer
from r1mega.errors import ConfigError


@pytest.fixture
def no_eos_tokenizer(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator([f"Q: {a}+{b}= A: {a + b}" for a in range(10) for b in range(10)], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(str(tmp_path))


def test_raw_sft_without_an_eos_token_is_refused_by_key(tmp_path, no_eos_tokenizer):
    assert no_eos_tokenizer.eos_id is None
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Q: 1+2="},
                                             {"role": "assistant", "content": "A: 3"}]}) + "\n")
    with pytest.raises(ConfigError) as e:
        SFTData(str(data), no_eos_tokenizer, 32, 0, "raw")
    assert e.value.key == "data.sft_template" and str(tmp_path) in str(e.value)
    rows = SFTData(str(data), no_eos_tokenizer, 256, 0, "r1").rows  # r1 writes its end marker as text
    assert len(rows) == 1
