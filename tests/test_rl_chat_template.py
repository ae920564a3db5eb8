"""Hostile probe: a chat template that refuses a chat itself (Mistral's and Gemma's raise_exception for a
system turn or unordered roles). `r1mega generate --template chat` (and GRPO's chat templates) ended in a
jinja2 traceback; the refusal must be an `error:` naming the prompt's file:line and the template's message."""
from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = str(tmp_path_factory.mktemp("chat") / "llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=280, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   eos_token_id=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["<user>what is 2 + 3?<assistant>5"] * 10, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>", "chat_template": NO_SYSTEM}, f)
    return d


def test_tokenizer_names_its_template_s_refusal(model_dir):
    from r1mega.data.tokenizer import Tokenizer
    from r1mega.errors import DataError

    tok = Tokenizer(model_dir)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<assistant>")
    with pytest.raises(DataError, match="chat template refused this chat .*System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])


def test_generate_names_the_prompt_line(model_dir, tmp_path, capsys):
    from r1mega.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "what is 2 + 3?"}) + "\n" + json.dumps(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+3?"}]}) + "\n")
    rc = main(["generate", "--model", model_dir, "--prompts", str(prompts), "--out", str(tmp_path / "out"),
               "--template", "chat", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "p.jsonl:2:" in err and "System role not supported" in err and "Traceback" not in err


def test_grpo_prompt_source_names_the_prompt_line(model_dir, tmp_path):
    from r1mega.data.prompts import read_problems
    from r1mega.data.prompts import render
    from r1mega.data.tokenizer import Tokenizer
    from r1mega.errors import DataError

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                                   "answer": "5"}) + "\n")
    problem = read_problems(str(prompts))[0]
    with pytest.raises(DataError, match=r"p\.jsonl:1: .*System role not supported"):
        render(problem, "chat_think", Tokenizer(model_dir))
