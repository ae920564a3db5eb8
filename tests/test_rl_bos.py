"""Hostile probe: a tokenizer that starts a text with BOS: tokenizer_config.json says `add_bos_token: true`
(DeepSeek-V3's, Llama 2's), or says nothing and tokenizer.json's post-processor writes it (Llama 3's,
which transformers follows). GRPO poses `raw`/`r1_zero` prompts as BOS + text (data/prompts.py), as transformers'
tokenizer encodes them; `r1mega generate`/`eval`/`reject-sample` must sample from the same context
(they dropped the BOS: a model RL-trained with it was evaluated and rejection-sampled without it,
and the rejection SFT data carried prompt ids the policy never saw)."""
from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = ["Q: what is 3 + 4? A: 7. The answer is <answer>7</answer>. ", "def f(x):\n    return x * 2\n"] * 20


def _tokenizer_dir(d: str, style: str = "config") -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=290, special_tokens=["<s>", "</s>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    if style == "config":
        config.update(add_bos_token=True, add_eos_token=False)
    else:  # Llama 3's way: no add_bos_token key, the post-processor writes BOS
        t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                         special_tokens=[("<s>", 0)])
    t.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)


@pytest.fixture(scope="module", params=["config", "post_processor"])
def llama_dir(tmp_path_factory, request):
    d = str(tmp_path_factory.mktemp("bos") / "llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=290, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    _tokenizer_dir(d, request.param)
    return d


def _grpo_prompt_ids(tok, problem: dict, template: str) -> list[int]:
    from r1mega.config import RLConfig
    from r1mega.data.prompts import PromptSource

    source = PromptSource(RLConfig(template=template), "sums", 0, tok)
    return source.encode(source.render(problem))


@pytest.mark.parametrize("template", ["raw", "r1_zero"])
def test_generate_poses_prompts_as_grpo_does(llama_dir, tmp_path, template):
    from r1mega.cli import main
    from r1mega.data.tokenizer import Tokenizer

    tok = Tokenizer(llama_dir)
    assert tok.add_bos and tok.bos_id == 0
    problem = {"id": "p0", "prompt": "what is 3 + 4?", "answer": "7"}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(problem) + "\n")
    out = tmp_path / "out"
    assert main(["reject-sample", "--model", llama_dir, "--prompts", str(prompts), "--out", str(out),
                 "--samples", "1", "--temperature", "0", "--max-new-tokens", "4", "--template", template,
                 "--keep", "1"]) == 0
    grpo_ids = _grpo_prompt_ids(tok, problem, template)
    assert grpo_ids[0] == tok.bos_id
    if template == "raw" and "add_bos_token" not in open(os.path.join(llama_dir, "tokenizer_config.json")).read():
        # Llama 3's way: as transformers' tokenizer encodes the text
        assert grpo_ids == transformers.AutoTokenizer.from_pretrained(llama_dir)(problem["prompt"]).input_ids
    shards = out / "samples"
    samples = [json.loads(line) for name in sorted(os.listdir(shards)) if name.endswith(".jsonl")
               for line in open(shards / name)]
    assert samples, os.listdir(out)
    assert samples[0]["prompt_ids"] == grpo_ids
    # the greedy completion is transformers' from the same ids
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    ids = torch.tensor([grpo_ids])
    ref = hf.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=1, pad_token_id=1)[0, len(grpo_ids):]
    assert samples[0]["completion_ids"] == ref.tolist()[:len(samples[0]["completion_ids"])]


def test_generation_only_r1_format_runs_and_gets_one_bos(llama_dir, tmp_path):
    """`--template r1` (generate's default; a format GRPO has no Template for) encodes: one BOS first."""
    from r1mega.cli import main
    from r1mega.data.tokenizer import Tokenizer

    tok = Tokenizer(llama_dir)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "what is 3 + 4?", "answer": "7"}) + "\n")
    out = tmp_path / "out"
    assert main(["reject-sample", "--model", llama_dir, "--prompts", str(prompts), "--out", str(out),
                 "--samples", "1", "--temperature", "0", "--max-new-tokens", "4", "--keep", "1"]) == 0
    shards = out / "samples"
    sample = next(json.loads(line) for name in sorted(os.listdir(shards)) if name.endswith(".jsonl")
                  for line in open(shards / name))
    assert sample["prompt_ids"][0] == tok.bos_id and sample["prompt_ids"][1] != tok.bos_id
