"""`r1mega generate/eval/reject-sample --template chat` with a tokenizer that has no chat template was
refused as "config error at 'data.tokenizer' ... use rl.template=r1_zero or raw": GRPO's keys, which
these commands do not take. The refusal names their own flag and its choices."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from r1mega.data.tokenizer import load_tokenizer
from r1mega.errors import ConfigError
from r1mega.generation.records import render_prompt


def test_chat_templates_without_one_name_the_template_flag(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["Q: 1+2= A: 3"], trainers.BpeTrainer(
        vocab_size=270, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(str(tmp_path))
    rec = {"prompt": "Q: 1+2=", "messages": None}
    for template in ("chat", "chat_think"):
        with pytest.raises(ConfigError) as e:
            render_prompt(rec, template, tokenizer)
        assert e.value.key == "--template" and "--template r1, r1_zero or raw" in str(e.value)
        assert "rl.template" not in str(e.value)
    assert render_prompt(rec, "raw", tokenizer) == ("Q: 1+2=", "")
