"""The model-family seam: a config names its family, and every command that starts from a
checkpoint takes the family and the shapes from it."""
from __future__ import annotations

import json
import os
import re
import sys
import tokenize

import pytest
import torch

from r1mega.config import ConfigError, load_config, validate
from r1mega.models.family import family_for, family_for_hf, family_from_meta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_model_section_names_its_family():
    cfg = validate(load_config(None, ["model.family=dense", "model.arch=llama", "model.qkv_bias=false",
                                      "model.vocab_size=64", "model.num_layers=2"]), 1)
    family, m = family_for(cfg)
    assert family.name == "dense" and m.arch == "llama" and m.vocab_size == 64
    # keys of another family are refused by name
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.family=dense", "model.kv_lora_rank=8"])
    assert "kv_lora_rank" in e.value.key
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.family=gpt9"])
    assert e.value.key == "model.family"
    # `student:` stays the dense family's section
    student = load_config(os.path.join(ROOT, "configs", "tiny", "distill_student.yaml"))
    assert family_for(student)[0].name == "dense"


def test_no_silent_default_family():
    with pytest.raises(ConfigError):
        family_for_hf({"vocab_size": 8})  # no model_type
    with pytest.raises(Exception) as e:
        family_from_meta({"model_config": {"vocab_size": 8}})  # no family recorded
    assert "family" in str(e.value)


def test_train_aliases_set_the_family_training_keys():
    with pytest.warns(FutureWarning, match="train.mtp_weight is deprecated"):
        cfg = validate(load_config(None, ["train.mtp_weight=0.1", "train.bias_update_rate=0"]), 1)
    assert cfg.model.mtp_weight == 0.1 and cfg.model.bias_update_rate == 0.0
    cfg = validate(load_config(None, ["model.mtp_weight=0.2"]), 1)
    assert cfg.model.mtp_weight == 0.2
    # a dense model has no MTP: a loss weight given by the older name is ignored
    validate(load_config(os.path.join(ROOT, "configs", "tiny", "distill_student.yaml"), ["train.mtp_weight=0"]), 1)


@pytest.mark.parametrize("family, key, stage, refused", [
    ("deepseek_v3", "train.dsa_stage", "sparse", "has none"),  # only DeepSeek-V3.2's family has an indexer to train
    ("deepseek_v3", "model.dsa_stage", "sparse", "dsa_stage"),  # not a key of DeepSeek-V3's section
    ("dense", "train.dsa_stage", "sparse", "has none"),
    ("deepseek_v32", "model.dsa_stage", "dense_warmup", None), ("deepseek_v32", "model.dsa_stage", "sparse", None),
    ("deepseek_v32", "train.dsa_stage", "sparse", None),  # the older name still sets the model's key
    ("deepseek_v32", "model.dsa_stage", "warmup", "expected dense_warmup, sparse or null"),
    ("deepseek_v32", "train.dsa_stage", "warmup", "expected dense_warmup, sparse or null"),
])
def test_train_keys_a_family_owns_are_checked_by_it(family, key, stage, refused):
    from r1mega.config import validate_training

    def checked():
        return validate_training(load_config(None, [f"model.family={family}", "model.num_layers=2",
                                                    "data.synthetic=addition", f"{key}={stage}"]), 1)

    if refused is None:
        assert checked().model.dsa_stage == stage
        return
    with pytest.raises(ConfigError) as e:
        checked()
    assert e.value.key in (key, "model.dsa_stage") and refused in str(e.value), (e.value.key, str(e.value))


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v32"])
@pytest.mark.parametrize("key", ["mtp_weight", "balance_alpha", "bias_update_rate", "index_loss_weight"])
@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_family_training_weights_must_be_finite_and_not_negative(family, key, value):
    if key == "index_loss_weight" and family == "deepseek_v3":
        return  # not a key of DeepSeek-V3's section
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, [f"model.family={family}", "model.num_layers=2", "data.synthetic=addition",
                                    f"model.{key}={value}"]), 1)
    assert e.value.key == f"model.{key}", e.value.key


def test_dry_run_counts_experts_through_the_family(capsys):
    from r1mega.dry_run import dry_run

    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "distill_student.yaml"), ["data.seq_length=32"])
    dry_run(cfg, 2)
    assert f"model {cfg.active_model.num_layers} layers / 0 experts" in capsys.readouterr().out
    cfg = load_config(None, ["model.num_layers=2", "model.n_routed_experts=8", "data.seq_length=32"])
    dry_run(cfg, 2)
    assert "model 2 layers / 8 experts" in capsys.readouterr().out


def _generic_sources():
    """(path, repo-relative path) of every Python file outside r1mega/models/ (the families and their
    registry) in the package and tools/."""
    for top in ("r1mega", "tools"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if os.path.relpath(dirpath, ROOT).split(os.sep)[:2] == ["r1mega", "models"]:
                continue
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    yield path, os.path.relpath(path, ROOT).replace(os.sep, "/")


def test_generic_code_imports_no_family_by_name():
    """Outside r1mega/models/ (the families and their registry) no code or doc names a family's
    module: generic code asks the protocol."""
    hits = []
    for path, rel in _generic_sources():
        with open(path, encoding="utf-8") as f:
            hits += [f"{rel}:{i}" for i, line in enumerate(f, 1) if "deepseek_v3" in line]
    assert not hits, hits


def test_float32_rounded_settings_match_the_checkpoint():
    from r1mega.train.checkpoint import ArchitectureMismatch, check_architecture

    meta = {"model_config": {"rms_norm_eps": 9.999999747378752e-06, "vocab_size": 64}}
    check_architecture(meta, {"rms_norm_eps": 1e-5, "vocab_size": 64}, (), "ckpt")
    with pytest.raises(ArchitectureMismatch):
        check_architecture(meta, {"rms_norm_eps": 1e-6, "vocab_size": 64}, (), "ckpt")


@pytest.mark.slow
def test_dense_hf_model_runs_grpo_and_generates_from_the_checkpoint_alone(tmp_path):
    """The user story: a Llama-architecture HF model imported with r1mega-convert, then the R1-Zero
    stage config with only train.load (no model section): the dense model is built from the
    checkpoint (its vocab, its float32-rounded rms_norm_eps), one GRPO step runs, and generate
    loads the result with no --config."""
    import transformers

    sys.path.insert(0, os.path.dirname(__file__))
    from rl_data import MATH, write_jsonl, write_tokenizer

    hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
    cfg = transformers.LlamaConfig(vocab_size=640, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    hf["rms_norm_eps"] = 9.999999747378752e-06  # as a float32 round trip writes it
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf, f)
    write_tokenizer(hf_dir)
    prompts = write_jsonl(str(tmp_path / "math.jsonl"), MATH)
    # each command's main() in this process, as its user-facing steps (test_convert.py, test_grpo.py and
    # test_generate_eval.py start the commands themselves)
    from cli_in_process import run_main
    from r1mega import cli
    from tools import convert

    res = run_main(convert.main, ["import", "--hf-dir", hf_dir, "--out", ckpt, "--dtype", "float32"], cwd=ROOT)
    assert res.returncode == 0, res.stderr
    res = run_main(cli.main, ["grpo", "--config", os.path.join(ROOT, "configs", "stage", "r1_zero.yaml"),
                              f"train.load={ckpt}", f"rl.prompts=[{prompts}]", f"train.run_dir={tmp_path / 'run'}",
                              "train.steps=1", "train.dtype=float32", "rl.group_size=2", "rl.prompts_per_step=2",
                              "rl.minibatches=1", "rl.max_new_tokens=4", "rl.max_new_tokens_schedule=[]",
                              "data.micro_batch_size=4", "data.global_batch_size=4", "train.save_interval=0"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    meta = json.loads((step / "meta.json").read_text())
    family, model_cfg = family_from_meta(meta)
    assert family.name == "dense" and model_cfg.vocab_size == 640 and model_cfg.arch == "llama"
    out = tmp_path / "gen"
    res = run_main(cli.main, ["generate", "--model", str(step), "--tokenizer", hf_dir, "--prompts", prompts,
                              "--out", str(out), "--max-new-tokens", "4", "--samples", "1"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for name in sorted(os.listdir(out)) if name.startswith("shard-")
            for line in (out / name).read_text().splitlines()]
    assert len(rows) == len(MATH)


# identifiers that are one family's knowledge: its routing bias, its indexer and balance loss, its
# recompute units, its MTP module; generic code reaches them through the family protocol only
FAMILY_WORDS = re.compile(r"deepseek|mtp|indexer|dsa|e_score_correction|balance|index_loss|mla_up_proj|moe_act"
                          r"|shared_experts")
# where a family word may stay, and why
ALLOWED = {
    # the deprecated `train.<key>` aliases of family training keys (TRAIN_ALIASES) and the RL keys of
    # the MTP draft (rl.speculative=mtp, rl.mtp_weight)
    "r1mega/config.py": {"mtp_weight", "balance_alpha", "dsa_stage", "index_loss_weight"},
    # GRPO trains the speculative draft on the rollouts (rl.mtp_weight)
    "r1mega/rl/update.py": {"mtp_weight"},
    # the self-speculative decoder drafts with the model's MTP module
    "r1mega/inference/speculative.py": "mtp",
}


def test_generic_code_names_no_family_internals():
    """Outside r1mega/models/ no identifier (comments and docs aside) names a family's parts, apart
    from the listed exceptions: the training loop, lm_step, recompute and the rest ask the protocol."""
    hits = []
    for path, rel in _generic_sources():
        allowed = ALLOWED.get(rel, set())
        with open(path, "rb") as f:
            for tok in tokenize.tokenize(f.readline):
                word = tok.string
                if tok.type != tokenize.NAME or not FAMILY_WORDS.search(word) or word.endswith("Error"):
                    continue
                if word in allowed or (isinstance(allowed, str) and allowed in word.lower()):
                    continue
                hits.append(f"{rel}:{tok.start[0]}: {word}")
    assert not hits, hits
