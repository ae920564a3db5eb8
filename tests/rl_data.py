"""Real artefacts for the GRPO-on-your-data tests, built locally: a byte-level BPE tokenizer
trained with the `tokenizers` library (tokenizer.json + tokenizer_config.json with special tokens
and a DeepSeek-R1-style chat template), math and code prompt files, and a tiny DeepSeek-V3
checkpoint imported with r1mega-convert (carrying the tokenizer, as a user's would)."""
from __future__ import annotations

import json
import os

from r1mega.data.prompts import R1_ZERO
from r1mega.data.tokenizer import ASSISTANT, BOS, EOS, USER

SPECIAL = [BOS, EOS, USER, ASSISTANT, "<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% else %}" + ASSISTANT + "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
MATH = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "id": f"add-{a}-{b}"}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (9, 9)]]
CODE = [
    {"prompt": "Write a function inc(x) that returns x + 1.", "tests": "assert inc(1) == 2\nassert inc(-1) == 0"},
    {"prompt": "Write double(x).", "tests": "def check(f):\n    assert f(3) == 6", "entry_point": "double"},
    {"prompt": "Read n from stdin and print n * 2.", "tests": [{"input": "3\n", "output": "6\n"}]},
    {"messages": [{"role": "user", "content": "Write neg(x) returning -x."}], "tests": "assert neg(2) == -2"},
]


def write_tokenizer(folder: str, vocab_size: int = 600) -> str:
    """Train a byte-level BPE on text like the prompts (the R1-Zero template included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.makedirs(folder, exist_ok=True)
    corpus = [R1_ZERO.format(prompt=p["prompt"]) for p in MATH] * 20
    corpus += [f"<think> {a} plus {b} is {a + b} </think> <answer> {a + b} </answer>" for a in range(10) for b in range(10)]
    corpus += ["def inc(x):\n    return x + 1\n", "print(int(input()) * 2)", "Write a function that returns"] * 10
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "bos_token": {"content": BOS, "special": True}, "eos_token": EOS,
                   "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}, f, ensure_ascii=False)
    return folder


def write_jsonl(path: str, records: list[dict]) -> str:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def imported_checkpoint(root: str, vocab_size: int = 640) -> str:
    """A tiny random DeepSeek-V3 (vocab padded past the tokenizer's) saved as Hugging Face does,
    with the tokenizer beside it, then imported by r1mega-convert. Returns the checkpoint dir."""
    from tiny_hf import make_hf_model
    from tools.convert import do_import

    hf_dir = os.path.join(root, "hf")
    make_hf_model(vocab_size=vocab_size, num_hidden_layers=2, n_group=2, topk_group=1,
                  max_position_embeddings=512).save_pretrained(hf_dir)
    write_tokenizer(hf_dir)
    out = os.path.join(root, "ckpt")
    do_import(hf_dir, out, dtype="float32")
    return out
