"""A second hostile pass: fat-fingered configs, damaged run directories, odd converter inputs.

Every probe must end in one named `error: ...` line with exit status 2 (no traceback) or in a
correct recovery, and leave every file it was given unchanged. Config probes stop in validation,
before any weight exists; the checkpoint probes share one tiny two-step run.
"""
import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1mega.cli import main as cli_main
from r1mega.config import ConfigError, ModelConfig, load_config, validate_training
from tools.convert import main as convert_main
from tools.preprocess_data import main as preprocess_main
from tools.train_tokenizer import main as tokenizer_main

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny", "pretrain.yaml")


def snapshot(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def named_error(capsys, run, argv) -> str:
    """Run a command's main(argv); it must print one `error: ...` line, exit 2, and no traceback."""
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error: " in err, err
    return err


# ---- configs: refused in validation, before data, weights or files ---------------------------

@pytest.mark.parametrize("override, key, words", [
    ("model.hidden_size=99999999999999999999", "model.hidden_size", "beyond any supported size"),
    ("data.seq_length=8192", "data.seq_length", "exceeds model.max_position_embeddings=4096"),
    ("data.tokenizer=/no/such/tok.json", "data.tokenizer", "set together with data.synthetic"),
    ("data.paths=[/no/such/prefix]", "data.paths", "set together with data.synthetic"),
    ("optim.lr=nan", "optim.lr", "got nan"),
    ("optim.eps=inf", "optim.eps", "got inf"),
    ("optim.clip_grad=inf", "optim.clip_grad", "got inf"),
    ("optim.beta1=nan", "optim.beta1", "[0, 1)"),
    ("train.mtp_weight=nan", "train.mtp_weight", "got nan"),
    ("model.rms_norm_eps=inf", "model.rms_norm_eps", "got inf"),
    ("parallel.pp_layers=[2,2]", "parallel.pp_layers", "2 entries for 1 pipeline stages"),
])
def test_config_probe_is_named(override, key, words):
    with pytest.raises(ConfigError) as e:
        validate_training(load_config(TINY, [override]), 1)
    assert e.value.key == key and words in str(e.value)


def test_zero_or_negative_world_is_named():
    with pytest.raises(ConfigError, match="world size must be >= 1"):
        validate_training(load_config(TINY), 0)


def test_mistyped_hf_config_is_named_by_key():
    from tiny_hf import make_hf_model

    hf = make_hf_model("DeepseekV3").config.to_dict()
    with pytest.raises(ConfigError, match="hidden_size.*expected int, got '64'"):
        ModelConfig.from_hf({**hf, "hidden_size": "64"})
    with pytest.raises(ConfigError, match="expected a JSON object"):
        ModelConfig.from_hf([1])


@pytest.mark.parametrize("extra, words", [
    (["--dry-run", "--world", "0"], "'--world': must be > 0, got 0"),
    (["--dry-run", "--world", "-4"], "'--world': must be > 0, got -4"),
    (["--dry-run", "--gpu-mem", "-1"], "'--gpu-mem': must be > 0"),
])
def test_dry_run_sizes_are_named(capsys, extra, words):
    assert words in named_error(capsys, cli_main, ["pretrain", "--config", TINY, *extra])


def test_plan_sizes_are_named(capsys):
    err = named_error(capsys, cli_main, ["plan", "--config", TINY, "--gpu-mem", "nan"])
    assert "'--gpu-mem': must be > 0, got nan" in err


def test_directory_as_config_is_named(capsys, tmp_path):
    err = named_error(capsys, cli_main, ["pretrain", "--config", str(tmp_path)])
    assert f"{tmp_path} is not a file" in err


@pytest.mark.parametrize("key", ["train.run_dir", "data.cache_dir"])
def test_run_or_cache_dir_that_is_a_file_is_named(capsys, tmp_path, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    args = [f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", f"{key}={blocker}"]
    err = named_error(capsys, cli_main, ["pretrain", "--config", TINY, *args])
    assert f"'{key}': {blocker} exists and is not a directory" in err
    assert blocker.read_text() == "keep me"


def test_vocab_too_small_for_the_synthetic_tokenizer_is_named(capsys, tmp_path):
    err = named_error(capsys, cli_main, ["pretrain", "--config", TINY, "model.vocab_size=8",
                                         f"train.run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data",
                                         "data.synthetic_docs=50"])
    assert "'model.vocab_size': 8 is too small" in err


# ---- tools: tokenizer and preprocessing -----------------------------------------------------

@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    with open(d / "docs.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"sum {i} plus {i * 3} is {i * 4}. hello world"}) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "not_a_tokenizer.json").write_text('{"text": 5 oops')
    assert tokenizer_main(["--input", str(d / "docs.jsonl"), "--vocab-size", "300",
                           "--output-prefix", str(d / "tok")]) == 0
    return d


@pytest.mark.parametrize("args, words", [
    (["--vocab-size", "0"], "--vocab-size must be >= 1, got 0"),
    (["--vocab-size", "5"], "sentencepiece refused to train"),
    (["--input", "{d}/empty.jsonl"], "no documents under key 'text'"),
    (["--input", "{d}/missing.jsonl"], "missing.jsonl: no such file"),
])
def test_tokenizer_tool_errors_keep_the_existing_tokenizer(capsys, docs, args, words):
    before = snapshot(docs)
    argv = ["--input", str(docs / "docs.jsonl"), "--output-prefix", str(docs / "tok")]
    argv += [a.format(d=docs) for a in args]
    assert words in named_error(capsys, tokenizer_main, argv)
    assert snapshot(docs) == before


@pytest.mark.parametrize("prefix, tokenizer, words", [
    ("{d}", "{d}/tok.model", "is a directory; give a file prefix inside it"),
    ("{d}/out", "{d}/not_a_tokenizer.json", "cannot load a tokenizer"),
    ("{d}/out", "{d}", "cannot load a tokenizer"),
    ("{d}/blocked", "{d}/tok.model", "blocked.bin is a directory"),
])
def test_preprocess_refuses_by_name(capsys, docs, prefix, tokenizer, words):
    (docs / "blocked.bin").mkdir(exist_ok=True)
    before = snapshot(docs)
    argv = ["--input", str(docs / "docs.jsonl"), "--tokenizer", tokenizer.format(d=docs),
            "--output-prefix", prefix.format(d=docs)]
    assert words in named_error(capsys, preprocess_main, argv)
    assert snapshot(docs) == before and not os.path.exists(f"{docs}.bin")


# ---- checkpoints: damaged run directories ---------------------------------------------------

@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    assert cli_main(["pretrain", "--config", TINY, f"train.run_dir={root}/run", f"data.cache_dir={root}/data",
                     "train.steps=2", "train.save_interval=1", "data.synthetic_docs=200", "data.seq_length=32",
                     "data.global_batch_size=4", "data.micro_batch_size=4", "optim.warmup_steps=0"]) == 0
    return root


def resume(root, run, *extra):
    return cli_main(["pretrain", "--config", TINY, f"train.run_dir={run}", f"data.cache_dir={root}/data",
                     "train.steps=3", "data.synthetic_docs=200", "data.seq_length=32", "data.global_batch_size=4",
                     "data.micro_batch_size=4", "optim.warmup_steps=0", *extra])


@pytest.fixture
def run_copy(base_run, tmp_path):
    shutil.copytree(base_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_checkpoint_probes(capsys, base_run, run_copy, tmp_path):
    """Several damaged run directories in one test (each on its own copy), to share one base run."""
    ckpt = run_copy / "checkpoints"
    # meta.json with a mistyped counter: that step is refused by name, the previous one is used
    meta = json.loads((ckpt / "step_00000002" / "meta.json").read_text())
    (ckpt / "step_00000002" / "meta.json").write_text(json.dumps({**meta, "consumed_samples": "lots"}))
    assert resume(base_run, run_copy) == 0
    err = capsys.readouterr().err
    assert "'consumed_samples' must be an integer >= 0, got 'lots'" in err and "falling back" in err

    # `latest` naming a path outside its directory is not followed; the step directories are
    other = tmp_path / "other"
    shutil.copytree(base_run / "run", other)
    (other / "checkpoints" / "latest").write_text("/etc")
    assert resume(base_run, other) == 0
    out, err = capsys.readouterr()
    assert "holds '/etc'" in err and "resumed from" in out and "step_00000002 at step 2" in out

    # `latest` as a directory: saving could never replace it, so refuse before any work
    third = tmp_path / "third"
    shutil.copytree(base_run / "run", third)
    os.remove(third / "checkpoints" / "latest")
    os.mkdir(third / "checkpoints" / "latest")
    before = snapshot(third)
    code = resume(base_run, third)
    err = capsys.readouterr().err
    assert code == 2 and "latest is a directory" in err and "Traceback" not in err
    assert snapshot(third) == before


@pytest.mark.parametrize("what, words", [
    ("hf", "is a Hugging Face model directory; convert it first"),
    ("run", "is a run directory; give one of its checkpoints"),
])
def test_train_load_of_the_wrong_directory_says_what_to_give(capsys, base_run, tmp_path, what, words):
    load = tmp_path / "load"
    if what == "hf":
        load.mkdir()
        (load / "config.json").write_text("{}")
    else:
        shutil.copytree(base_run / "run", load)
    before = snapshot(load)
    code = resume(base_run, tmp_path / "fresh", f"train.load={load}")
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert snapshot(load) == before and not (tmp_path / "fresh" / "checkpoints").exists()


# ---- conversion -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tiny_hf import make_hf_model

    d = tmp_path_factory.mktemp("hf") / "model"
    make_hf_model("DeepseekV3").save_pretrained(d)
    return d


def test_convert_probes(capsys, hf_dir, tmp_path):
    # the same tensor in two un-indexed shards: which one is meant is unknown, so refuse (a
    # model.safetensors would be read alone, as transformers reads it: the shards here have other names)
    dup = tmp_path / "dup"
    shutil.copytree(hf_dir, dup)
    (dup / "model.safetensors").rename(dup / "main.safetensors")
    emb = load_file(dup / "main.safetensors")["model.embed_tokens.weight"]
    save_file({"model.embed_tokens.weight": torch.zeros_like(emb)}, dup / "extra.safetensors")
    # a config.json that is not an object, and one with a string where a number belongs
    as_list, as_str = tmp_path / "as_list", tmp_path / "as_str"
    shutil.copytree(hf_dir, as_list)
    (as_list / "config.json").write_text("[1]")
    shutil.copytree(hf_dir, as_str)
    config = json.loads((hf_dir / "config.json").read_text())
    (as_str / "config.json").write_text(json.dumps({**config, "hidden_size": "64"}))
    before = snapshot(tmp_path)
    cases = [
        (dup, [], "model.embed_tokens.weight is stored in both extra.safetensors and main.safetensors"),
        (as_list, [], "expected a JSON object of model settings, got list"),
        (as_str, [], "hidden_size': expected int, got '64'"),
        (hf_dir, ["--shard-size", "nan"], "--shard-size must be a positive number of GiB, got nan"),
        (hf_dir, ["--shard-size", "-1"], "--shard-size must be a positive number of GiB, got -1.0"),
    ]
    for src, extra, words in cases:
        err = named_error(capsys, convert_main, ["import", "--hf-dir", str(src), "--out", str(tmp_path / "out"),
                                                  *extra])
        assert words in err, (src, err)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
