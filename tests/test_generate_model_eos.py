"""`r1mega generate --model HF_DIR --tokenizer ELSEWHERE`: transformers' generate stops at every id the
model's generation_config.json lists, wherever its tokenizer came from; r1mega read that file only
beside the tokenizer, so with a tokenizer from another directory it generated past the model's EOS
ids to --max-new-tokens. The model's own list now counts too."""
import json

import pytest
import torch

from r1mega import cli

VOCAB = 48


def _tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789 ?":
        vocab[c] = len(vocab)
    for i in range(VOCAB - len(vocab)):
        vocab[chr(0x100 + i)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return tok


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("eos")
    # every id but two ends a completion for the model: its first token almost surely does
    eos = [1] + list(range(4, VOCAB))
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               eos_token_id=eos, bos_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(root / "model")
    assert json.loads((root / "model" / "generation_config.json").read_text())["eos_token_id"] == eos
    return model, root / "model", _tokenizer(root / "tok"), root / "tok"


def test_generate_stops_at_the_models_eos_ids_with_a_tokenizer_from_elsewhere(model_and_tokenizer, tmp_path):
    model, model_dir, tok, tok_dir = model_and_tokenizer
    prompts = tmp_path / "p.jsonl"
    texts = {"a": "what is 12 ?", "b": "hello there", "c": "zz 9 a"}
    prompts.write_text("".join(json.dumps({"id": k, "prompt": v, "answer": "1"}) + "\n" for k, v in texts.items()))
    out = tmp_path / "out"
    assert cli.main(["generate", "--model", str(model_dir), "--tokenizer", str(tok_dir), "--prompts", str(prompts),
                     "--out", str(out), "--template", "raw", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    recs = {r["id"]: r for r in map(json.loads, (out / "shard-00000.jsonl").read_text().splitlines())}
    for key, text in texts.items():
        ids = torch.tensor([tok.encode(text).ids])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                             pad_token_id=1)[0, ids.shape[1]:].tolist()
        assert ref[-1] in model.generation_config.eos_token_id and len(ref) < 8
        assert recs[key]["finish_reason"] == "eos", recs[key]
        assert recs[key]["completion_tokens"] == len(ref)


def test_grpo_prompt_tokenizer_takes_the_checkpoints_eos_ids(model_and_tokenizer):
    from r1mega.config import DataConfig
    from r1mega.data.prompts import prompt_tokenizer

    model, model_dir, _, tok_dir = model_and_tokenizer
    tok = prompt_tokenizer(DataConfig(tokenizer=str(tok_dir)), VOCAB, str(model_dir))
    assert set(tok.eos_ids) == set(model.generation_config.eos_token_id) and tok.eos_id == 1
    assert prompt_tokenizer(DataConfig(tokenizer=str(tok_dir)), VOCAB, None).eos_ids == (1,)
