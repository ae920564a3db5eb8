"""A tied model (`tie_word_embeddings: true`) whose checkpoint also stores `lm_head.weight`.

transformers 5 ties the two only when the stored head equals the embedding; otherwise it keeps the
stored head as a separate output layer. r1mega's tied model reads the embedding as its head, so a
differing stored head made another model than transformers loads (verify-hf: logit diff 1.3 on a
tiny Qwen2). Such a checkpoint is refused by name; an equal stored head (as some tools save) still
imports and matches transformers.
"""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1mega import verify_hf
from r1mega.errors import CheckpointError
from r1mega.models.weights import SafetensorsDir, check_tied_head
from tools import convert


def _tied_qwen2(path: str, head_scale: float | None) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    file = os.path.join(path, "model.safetensors")
    sd = load_file(file)
    assert "lm_head.weight" not in sd  # transformers leaves a tied head out; some tools keep it
    emb = sd["model.embed_tokens.weight"]
    sd["lm_head.weight"] = emb.clone() if head_scale is None else emb * head_scale
    save_file(sd, file, metadata={"format": "pt"})


def _verify_args(hf_dir: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    verify_hf.add_args(parser)
    return parser.parse_args(["--hf-dir", hf_dir, "--seq-length", "8", "--grad-tol", "-1"])


def test_a_differing_stored_head_of_a_tied_model_is_refused(tmp_path, capsys):
    hf = str(tmp_path / "hf")
    _tied_qwen2(hf, head_scale=0.5)
    out = tmp_path / "ckpt"
    assert convert.main(["import", "--hf-dir", hf, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tie_word_embeddings is true but the stored lm_head.weight differs from model.embed_tokens.weight" in err
    assert "set tie_word_embeddings to false" in err
    assert not out.exists()
    # loading the HF directory itself (verify-hf, generate --model HF_DIR) refuses it the same way
    with pytest.raises(CheckpointError, match="differs from model.embed_tokens.weight"):
        verify_hf.run(_verify_args(hf))


def test_a_difference_in_a_late_row_block_is_found(tmp_path):
    hf = str(tmp_path / "hf")
    _tied_qwen2(hf, head_scale=None)
    file = os.path.join(hf, "model.safetensors")
    sd = load_file(file)
    sd["lm_head.weight"][63, 5] += 1.0
    save_file(sd, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="from row 60"):
        check_tied_head(SafetensorsDir(hf), True, rows_per_read=20)
    check_tied_head(SafetensorsDir(hf), False)  # an untied model uses its stored head: nothing to check


def test_an_equal_stored_head_of_a_tied_model_still_imports_and_matches(tmp_path, capsys):
    hf = str(tmp_path / "hf")
    _tied_qwen2(hf, head_scale=None)
    out = str(tmp_path / "ckpt")
    assert convert.main(["import", "--hf-dir", hf, "--out", out, "--dtype", "float32"]) == 0
    assert verify_hf.run(_verify_args(hf)) == 0
    assert "PASS" in capsys.readouterr().out
