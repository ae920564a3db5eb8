"""A checkpoint's tokenizer files are part of what its manifest covers: generation reads the
tokenizer beside the weights, so an edited tokenizer.json or chat template (or one copied in) would
silently change every prompt a checkpoint is sampled on. They are refused by name, like an edited
meta.json; checkpoints whose manifest predates this (no `tokenizer_files` key) still load."""
import json

import pytest
import torch

from r1mega import cli
from r1mega.errors import CheckpointError
from r1mega.train.checkpoint import MANIFEST, TOKENIZER_COVERED, _digest, verify_manifest
from tools.convert import main as convert_main

from test_generate_model_eos import _tokenizer


@pytest.fixture()
def imported(tmp_path):
    """(checkpoint, prompts file) of a tiny Llama imported with its tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               eos_token_id=1, bos_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(tmp_path / "hf")
    _tokenizer(tmp_path / "tok")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "hf" / f).write_bytes((tmp_path / "tok" / f).read_bytes())
    assert convert_main(["import", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "what is 12 ?", "answer": "1"}) + "\n")
    return tmp_path / "ckpt", prompts


def _generate(ckpt, prompts, out) -> int:
    return cli.main(["generate", "--model", str(ckpt), "--prompts", str(prompts), "--out", str(out),
                     "--template", "raw", "--temperature", "0", "--max-new-tokens", "4"])


def test_the_import_manifest_lists_its_tokenizer_files(imported):
    ckpt, _ = imported
    manifest = json.loads((ckpt / MANIFEST).read_text())
    assert manifest[TOKENIZER_COVERED] is True
    assert {"tokenizer.json", "tokenizer_config.json", "meta.json"} <= set(manifest["files"])


@pytest.mark.parametrize("damage", ["edited", "copied_in", "removed"])
def test_a_changed_tokenizer_file_is_refused_by_name(imported, tmp_path, capsys, damage):
    ckpt, prompts = imported
    assert _generate(ckpt, prompts, tmp_path / "before") == 0
    if damage == "edited":  # a token's id moved: every prompt would encode otherwise
        tok = json.loads((ckpt / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
        (ckpt / "tokenizer.json").write_text(json.dumps(tok))
        name, why = "tokenizer.json", "differs from what was saved"
    elif damage == "copied_in":
        (ckpt / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
        name, why = "chat_template.jinja", "not part of the save"
    else:
        (ckpt / "tokenizer_config.json").unlink()
        name, why = "tokenizer_config.json", "missing"
    capsys.readouterr()
    assert _generate(ckpt, prompts, tmp_path / "after") != 0
    err = capsys.readouterr().err
    assert f"error: {ckpt / name}: {why}" in err
    assert damage == "removed" or "--tokenizer" in err  # says how to use another tokenizer
    assert not (tmp_path / "after" / "shard-00000.jsonl").exists()


def test_a_manifest_from_before_tokenizer_coverage_still_verifies(imported):
    ckpt, _ = imported
    manifest = json.loads((ckpt / MANIFEST).read_text())
    files = {k: v for k, v in manifest["files"].items() if k in ("meta.json", "rng.pt") or k.startswith("part")}
    (ckpt / MANIFEST).write_text(json.dumps({"files": files, "digest": _digest(files)}))
    meta = json.loads((ckpt / "meta.json").read_text())
    verify_manifest(str(ckpt), meta)  # tokenizer files beside it are not judged by an old manifest
    files.pop("meta.json")  # what it does list is still checked
    (ckpt / MANIFEST).write_text(json.dumps({"files": files, "digest": _digest(files)}))
    with pytest.raises(CheckpointError, match="meta.json: not part of the save"):
        verify_manifest(str(ckpt), meta)


@pytest.mark.parametrize("name", ["tokenizer.json", "meta.json"])
def test_verify_hf_refuses_a_checkpoint_its_manifest_does_not_match(imported, capsys, name):
    """`verify-hf --ckpt` read the weights without the manifest: an import whose meta.json or tokenizer
    file was edited passed the parity check that generate, export and a resume then refuse."""
    ckpt, _ = imported
    args = ["verify-hf", "--hf-dir", str(ckpt.parent / "hf"), "--ckpt", str(ckpt), "--seq-length", "8"]
    assert cli.main(args) == 0
    doc = json.loads((ckpt / name).read_text())
    doc["edited"] = 1
    (ckpt / name).write_text(json.dumps(doc))
    capsys.readouterr()
    assert cli.main(args) != 0
    assert f"error: {ckpt / name}: differs from what was saved" in capsys.readouterr().err


def test_the_advice_for_a_changed_tokenizer_file_is_one_that_works(imported, tmp_path, capsys):
    """The refusal said 'to sample with another tokenizer, pass it (--tokenizer, ...)', but passing it
    is refused the same (the checkpoint is still not as saved): it now says to restore the checkpoint's
    file (or remove the copied-in one) and pass the other tokenizer instead."""
    ckpt, prompts = imported
    (ckpt / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    capsys.readouterr()
    assert cli.main(["generate", "--model", str(ckpt), "--tokenizer", str(tmp_path / "tok"), "--prompts", str(prompts),
                     "--out", str(tmp_path / "out"), "--template", "raw", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "not part of the save" in err and "remove it" in err and "--tokenizer" in err
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "tokenizer_config.json").write_text("{}")
    assert cli.main(["generate", "--model", str(ckpt), "--prompts", str(prompts), "--out", str(tmp_path / "out2"),
                     "--template", "raw", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "differs from what was saved" in err and "restore it" in err and "--tokenizer" in err


@pytest.mark.parametrize("name", ["tokenizer.json", "generation_config.json"])
def test_a_tokenizer_file_that_cannot_be_read_is_named(imported, tmp_path, capsys, name):
    """A listed tokenizer file the manifest check cannot read (here a directory in its place, as an I/O
    error would): a CheckpointError naming it, which a resume falls back from. Before: IsADirectoryError,
    a traceback out of every loader."""
    ckpt, prompts = imported
    (ckpt / name).unlink()
    (ckpt / name).mkdir()
    meta = json.loads((ckpt / "meta.json").read_text())
    with pytest.raises(CheckpointError, match=f"{ckpt / name}: unreadable"):
        verify_manifest(str(ckpt), meta)
    capsys.readouterr()
    assert _generate(ckpt, prompts, tmp_path / "out") == 2
    assert f"error: {ckpt / name}: unreadable" in capsys.readouterr().err


def test_generate_names_a_removed_tokenizer_json(imported, tmp_path, capsys):
    """tokenizer.json removed from beside an import's weights: generate named no file ('no tokenizer:
    pass --tokenizer'), and passing one was then refused for the missing file; the file is named first."""
    ckpt, prompts = imported
    (ckpt / "tokenizer.json").unlink()
    capsys.readouterr()
    assert _generate(ckpt, prompts, tmp_path / "out") == 2
    assert f"error: {ckpt / 'tokenizer.json'}: missing ({MANIFEST} lists it)" in capsys.readouterr().err
