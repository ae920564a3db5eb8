"""Hostile probe: a chat model whose generation_config.json lists several end tokens (Llama 3.1
Instruct: eos_token_id [128001, 128008, 128009]; Qwen2.5 Instruct: [151645, 151643]) while
tokenizer_config.json names one. transformers' generate ends a row at any of them; r1mega's rollouts
(generate/eval/reject-sample and GRPO) must too, not run on past the model's end of turn."""
from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = ["Q: what is 3 + 4? A: 7. The answer is <answer>7</answer>. ", "def f(x):\n    return x * 2\n"] * 20
VOCAB, EOS, N = 290, 1, 12


def _tokenizer(d: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<|eot|>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>"}, f)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama whose greedy continuation of the prompt holds a token that generation_config.json
    then lists as a second end token."""
    d = str(tmp_path_factory.mktemp("eos") / "llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   eos_token_id=EOS)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d)
    _tokenizer(d)
    ids = torch.tensor([_prompt_ids(d)])
    out = model.generate(ids, max_new_tokens=N, do_sample=False, eos_token_id=EOS, pad_token_id=EOS)[0, ids.shape[1]:]
    other = next(t for t in out.tolist()[2:] if t != EOS and t not in out.tolist()[:2])
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [EOS, other], "pad_token_id": EOS}, f)
    return d


def _prompt_ids(d: str) -> list[int]:
    from r1mega.data.tokenizer import Tokenizer

    return Tokenizer(d).encode("what is 3 + 4?")


def test_tokenizer_knows_every_end_token(model_dir):
    from r1mega.data.tokenizer import Tokenizer

    tok = Tokenizer(model_dir)
    listed = json.load(open(os.path.join(model_dir, "generation_config.json")))["eos_token_id"]
    assert tok.eos_id == EOS and set(tok.eos_ids) == set(listed)


def test_generate_stops_where_transformers_does(model_dir, tmp_path):
    from r1mega.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "what is 3 + 4?"}) + "\n")
    out = tmp_path / "out"
    assert main(["generate", "--model", model_dir, "--prompts", str(prompts), "--out", str(out), "--samples", "1",
                 "--temperature", "0", "--max-new-tokens", str(N), "--template", "raw"]) == 0
    shards = out / "samples" if (out / "samples").is_dir() else out
    rec = next(json.loads(line) for name in sorted(os.listdir(shards)) if name.endswith(".jsonl")
               for line in open(shards / name))
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([_prompt_ids(model_dir)])
    ref = hf.generate(ids, max_new_tokens=N, do_sample=False)[0, ids.shape[1]:].tolist()  # its generation_config
    assert len(ref) < N  # the premise: transformers stopped at the second end token
    assert (rec["completion_tokens"], rec["finish_reason"]) == (len(ref), "eos")


def test_static_engine_ends_rows_there_too(model_dir):
    """The reference static engine ends the row at the listed token as the continuous one does."""
    from r1mega.data.tokenizer import Tokenizer
    from r1mega.inference.generate import GenerationConfig, generate, generate_static

    tok = Tokenizer(model_dir)
    from r1mega.config import build_config, validate
    from r1mega.models.family import family_for_hf
    from r1mega.models.weights import load_hf_weights
    from r1mega.parallel.layout import single_process_state

    family, model_cfg = family_for_hf(model_dir)
    cfg = validate(build_config(model_cfg), 1)
    ps = single_process_state()
    model = family.build_stage(cfg.active_model, ps, cfg.parallel.pp_layers)
    load_hf_weights(model, model_dir)
    gen = GenerationConfig(N, temperature=0.0, eos_id=tok.eos_id, eos_ids=tok.eos_ids)
    prompt = [_prompt_ids(model_dir)]
    for engine in (generate, generate_static):
        ids = engine(model, ps, prompt, gen).completions()[0]
        assert ids[-1] in tok.eos_ids and ids[-1] != EOS and len(ids) < N, (engine.__name__, ids)


def test_rejection_sft_adds_no_eos_after_another_end_token():
    from r1mega.data.sft import render_sampled

    ids, learn = render_sampled([5, 6], [7, 9], EOS, (EOS, 9))  # the sample ended with the listed 9
    assert ids == [5, 6, 7, 9] and learn == [False, False, True, True]
    assert render_sampled([5], [7], EOS, (EOS, 9))[0] == [5, 7, EOS]  # cut short: EOS appended as before


@pytest.mark.parametrize("content", ['{"eos_token_id": [1, ', '{"eos_token_id": ["</s>"]}', '{"eos_token_id": -3}'])
def test_bad_generation_config_named(model_dir, tmp_path, content):
    import shutil

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.errors import DataError

    d = tmp_path / "tok"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(model_dir, name), d / name)
    (d / "generation_config.json").write_text(content)
    with pytest.raises(DataError, match="generation_config.json"):
        load_tokenizer(str(d))
