"""Cold-start and rejection-sampling SFT with `data.sft_template=model` (the stage configs' setting)
on a tokenizer whose chat template drops the thought from assistant turns, as DeepSeek-R1's (and its
distilled models') does with `content.split('</think>')[-1]`. With R1's first template, whose
generation prompt is `<｜Assistant｜>` alone, the rendered conversation still grew turn by turn, so
SFT trained ' A: 12<｜end▁of▁sentence｜>' for the reply '<think>3+4=7, 7+5=12</think> A: 12': the
chain of thought R1's SFT stages exist to teach was silently never learned. A turn the template does
not render whole is now refused by name; templates that keep the reply (re-spaced, as Qwen3's puts
the thought on its own lines) train it."""
from __future__ import annotations

import json
import os

import pytest

tokenizers = pytest.importorskip("tokenizers")

SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
TURNS = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
         "{% endif %}{% if m['role'] == 'assistant' %}{% set content = m['content'] %}CONTENT"
         "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}")
R1_DROPS_THOUGHT = TURNS.replace("CONTENT", "{% if '</think>' in content %}"
                                 "{% set content = content.split('</think>')[-1] %}{% endif %}")
KEEPS = TURNS.replace("CONTENT", "")
# Qwen3's way: the thought re-rendered on its own lines, the answer after a blank line
RESPACED = TURNS.replace("CONTENT", "{% if '</think>' in content %}{% set content = '<think>\\n' + "
                         "content.split('</think>')[0].split('<think>')[-1].strip() + '\\n</think>\\n\\n' + "
                         "content.split('</think>')[-1].lstrip() %}{% endif %}")
CHAT = [{"role": "user", "content": "Q: 3+4+5="},
        {"role": "assistant", "content": "<think>3+4=7, 7+5=12</think> A: 12"}]


def _tokenizer(path, template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from r1mega.data.tokenizer import load_tokenizer

    os.makedirs(path)
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["Q: 3+4+5= <think>3+4=7, 7+5=12</think> A: 12"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": SPECIAL[0], "eos_token": SPECIAL[1], "add_bos_token": True,
                   "chat_template": template}, f)
    return load_tokenizer(str(path), "data.tokenizer")


def _learned(tok, chat) -> str:
    from r1mega.data.sft import render

    ids, learn = render(chat, tok, "model")
    return tok.decode([i for i, trained in zip(ids, learn) if trained])


def test_a_template_that_drops_the_thought_is_refused(tmp_path):
    from r1mega.errors import DataError

    tok = _tokenizer(tmp_path / "r1", R1_DROPS_THOUGHT)
    with pytest.raises(DataError, match=r"not render assistant turn 1 whole.*data.sft_template=r1"):
        _learned(tok, CHAT)


def test_templates_that_keep_the_reply_train_it(tmp_path):
    keeps = _tokenizer(tmp_path / "keeps", KEEPS)
    assert _learned(keeps, CHAT) == CHAT[1]["content"] + SPECIAL[1]
    respaced = _tokenizer(tmp_path / "respaced", RESPACED)
    assert _learned(respaced, CHAT) == "<think>\n3+4=7, 7+5=12\n</think>\n\nA: 12" + SPECIAL[1]


def test_a_two_turn_chat_whose_last_reply_is_whole_trains(tmp_path):
    """Only what is trained is checked: every assistant turn, each rendered through its own end."""
    keeps = _tokenizer(tmp_path / "keeps", KEEPS)
    chat = CHAT + [{"role": "user", "content": "Q: 1+1+1="},
                   {"role": "assistant", "content": "<think>1+1=2, 2+1=3</think> A: 3"}]
    assert _learned(keeps, chat) == CHAT[1]["content"] + SPECIAL[1] + chat[3]["content"] + SPECIAL[1]
