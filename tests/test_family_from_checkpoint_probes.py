"""Hostile probes of the family seam from the command line: every command that loads an HF directory
or a checkpoint takes the family, shapes and tokenizer from it, and refuses what it cannot build by
name. Tiny random transformers models with a locally trained tokenizer; nothing is downloaded."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from r1mega.cli import main as r1mega
from r1mega.data.tokenizer import Tokenizer
from r1mega.models.family import family_for_hf
from tools.convert import main as convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
DEEPSEEK = dict(num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                v_head_dim=8, moe_intermediate_size=8, first_k_dense_replace=1, max_position_embeddings=128)


def save_tokenizer(out: str, vocab: int) -> None:
    """A byte-level BPE tokenizer with a chat template, saved as transformers saves a user's."""
    from tokenizers import Tokenizer as Raw, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Raw(models.BPE())
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.train_from_iterator(["Q: 3+4= A: 7", "<think>2+2=4</think> 4"] * 20, trainers.BpeTrainer(
        vocab_size=vocab - 3, special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tok.chat_template = CHAT
    tok.save_pretrained(out)


def save_hf(out: str, kind: str, **cfg) -> str:
    import transformers

    torch.manual_seed(0)
    shapes = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = getattr(transformers, f"{kind}ForCausalLM")(getattr(transformers, f"{kind}Config")(**{**shapes, **cfg}))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn_like(p)) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    save_tokenizer(out, 280)
    return out


def edit_config(hf_dir: str, **changes) -> None:
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for k, v in changes.items():
        if v is KeyError:
            del cfg[k]
        else:
            cfg[k] = v
    with open(path, "w") as f:
        json.dump(cfg, f)


def error_line(capsys) -> str:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")][-1]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "deepseek_v3", "deepseek_v32", "deepseek_v2"])
def test_a_config_key_left_out_means_what_transformers_makes_of_it(model_type):
    """A config.json with only the keys r1mega requires builds the model transformers builds from it
    (before: no routed_scaling_factor meant 1.0, not 2.5; no n_group 1 group, not 8; no Qwen3 head_dim
    hidden/heads, not 128; no Llama max_position_embeddings 32768, not 2048)."""
    import transformers

    classes = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
               "deepseek_v3": "DeepseekV3Config", "deepseek_v32": "DeepseekV32Config",
               "deepseek_v2": "DeepseekV2Config"}
    given = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if model_type.startswith("deepseek"):
        given.update(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)
    theirs = getattr(transformers, classes[model_type])(**given).to_dict()
    ours_from_few = family_for_hf({"model_type": model_type, **given})[1]
    ours_from_all = family_for_hf(theirs)[1]
    keep = {"num_mtp_layers"}  # transformers builds no MTP module whatever its config says
    differ = {k: (getattr(ours_from_few, k), getattr(ours_from_all, k)) for k in vars(ours_from_all)
              if k not in keep and getattr(ours_from_few, k) != getattr(ours_from_all, k)}
    assert not differ


def test_deepseek_without_routed_scaling_factor_equals_transformers(tmp_path, capsys):
    """The first probe: the key left out, verify-hf failed by 0.23 in the logits (scale 1.0 against
    transformers' 2.5) while the import went through."""
    hf = save_hf(str(tmp_path / "hf"), "DeepseekV3", n_routed_experts=16, num_experts_per_tok=2, n_group=8,
                 topk_group=4, routed_scaling_factor=2.5, n_shared_experts=1, **DEEPSEEK)
    edit_config(hf, routed_scaling_factor=KeyError, n_group=KeyError, topk_group=KeyError)
    assert r1mega(["verify-hf", "--hf-dir", hf, "--seq-length", "16", "--grad-tol", "-1"]) == 0
    diff = float(capsys.readouterr().out.strip().splitlines()[-1].split("=")[1])
    assert diff < 1e-4


@pytest.mark.parametrize("change, key", [
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}, "model.rope_scaling"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                          "long_factor": [1.0] * 4}}, "model.rope_scaling"),
    ({"rms_norm_eps": "abc"}, "rms_norm_eps"),
    ({"num_hidden_layers": "2"}, "num_layers"),
])
def test_unsupported_or_mistyped_dense_settings_are_refused_by_key(tmp_path, capsys, change, key):
    """Before: a ValueError/TypeError traceback (exit 1) from inside the rotary or the checks."""
    hf = save_hf(str(tmp_path / "hf"), "Llama", num_attention_heads=4, num_key_value_heads=2)
    edit_config(hf, **change)
    out = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", out]) == 2
    assert key in error_line(capsys)
    assert not os.path.exists(out)


def test_chat_template_file_and_tokenizer_travel_with_every_checkpoint(tmp_path, capsys):
    """transformers 5 writes the chat template to chat_template.jinja: the import dropped it (an SFT
    with the model's template was refused), and a checkpoint the trainer wrote had no tokenizer at all
    (generate and export of the trained model needed --tokenizer). Import -> SFT with no model section
    -> generate on the run directory -> export: each keeps the tokenizer and its template."""
    hf = save_hf(str(tmp_path / "hf"), "Qwen3", num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                 tie_word_embeddings=True)
    assert os.path.exists(os.path.join(hf, "chat_template.jinja"))
    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    assert Tokenizer(ckpt).chat_template == CHAT
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}+{i}="},
                                                     {"role": "assistant", "content": str(2 * i)}]}) + "\n"
                            for i in range(8)))
    run = str(tmp_path / "run")
    assert r1mega(["sft", "--config", os.path.join(ROOT, "configs/stage/distillation.yaml"), f"train.load={ckpt}",
                   f"data.paths=[{data}]", "data.seq_length=32", "data.global_batch_size=2", "train.steps=1",
                   "train.dtype=float32", "optim.warmup_steps=0", f"train.run_dir={run}"]) == 0
    step = os.path.join(run, "checkpoints", "step_00000001")
    assert Tokenizer(step).chat_template == CHAT
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    assert r1mega(["generate", "--model", run, "--prompts", str(prompts), "--out", str(tmp_path / "gen"),
                   "--samples", "1", "--max-new-tokens", "3", "--template", "chat"]) == 0
    exported = str(tmp_path / "exported")
    assert convert(["export", "--ckpt", step, "--out", exported]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        with open(os.path.join(hf, name)) as a, open(os.path.join(exported, name)) as b:
            assert a.read() == b.read(), name


def test_a_checkpoint_of_another_family_is_refused_as_such(tmp_path, capsys):
    """A DeepSeek model section over an imported Llama: the error offered
    train.allow_arch_change=[family,...], which can never load (the tensors are another model's)."""
    hf = save_hf(str(tmp_path / "hf"), "Llama", num_attention_heads=4, num_key_value_heads=1)
    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    rc = r1mega(["pretrain", "--config", os.path.join(ROOT, "configs/tiny/pretrain.yaml"), f"train.load={ckpt}",
                 f"train.run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'data'}", "train.steps=1"])
    assert rc == 2
    line = error_line(capsys)
    assert "holds a dense model" in line and "deepseek_v3" in line and "allow_arch_change" not in line
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_a_named_family_is_not_overridden_by_the_checkpoint(tmp_path, capsys):
    """`model.family=deepseek_v32` (shapes left out) over an imported Llama: the checkpoint's family
    silently won and a dense model trained; the named family and the checkpoint's now disagree by key."""
    hf = save_hf(str(tmp_path / "hf"), "Llama", num_attention_heads=4, num_key_value_heads=1)
    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    rc = r1mega(["sft", "--config", os.path.join(ROOT, "configs/stage/distillation.yaml"), f"train.load={ckpt}",
                 "model.family=deepseek_v32", f"train.run_dir={tmp_path / 'run'}"])
    assert rc == 2
    line = error_line(capsys)
    assert "'model.family'" in line and "deepseek_v32" in line and "dense" in line
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_verify_hf_names_a_checkpoint_of_another_model(tmp_path, capsys):
    """`verify-hf --hf-dir A --ckpt B` with B imported from another model whose tensors fit A's model
    (tied A, untied B; or B of another family holding A's tensors and more) loaded B silently and
    reported only a failed comparison; it now names each differing key, and the same model still passes."""
    tied = save_hf(str(tmp_path / "tied"), "Qwen2", num_attention_heads=4, num_key_value_heads=2,
                   tie_word_embeddings=True)
    untied = save_hf(str(tmp_path / "untied"), "Qwen2", num_attention_heads=4, num_key_value_heads=2)
    for name in ("tied", "untied"):
        assert convert(["import", "--hf-dir", str(tmp_path / name), "--out", str(tmp_path / f"{name}_ck")]) == 0
    assert r1mega(["verify-hf", "--hf-dir", tied, "--ckpt", str(tmp_path / "untied_ck"), "--seq-length", "8"]) == 2
    line = capsys.readouterr().err
    assert "'--ckpt'" in line and "model.tie_word_embeddings: checkpoint False, config.json True" in line
    assert r1mega(["verify-hf", "--hf-dir", untied, "--ckpt", str(tmp_path / "untied_ck"), "--seq-length", "8"]) == 0


def _sft_with_a_longer_rope(tmp_path, hf: str, factor: float, rows: int, kind_key: str = "") -> tuple[str, str]:
    """Import `hf`, then one SFT step of its model with the rope's factor raised to `factor` and 256
    positions (train.allow_arch_change; the config in tmp_path/long.yaml); the run directory.
    kind_key: the key the imported rope names its kind by, and only that one (asserted)."""
    import yaml

    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    with open(os.path.join(ckpt, "meta.json")) as f:
        model = json.load(f)["model_config"]
    if kind_key:
        other = {"type": "rope_type", "rope_type": "type"}[kind_key]
        assert model["rope_scaling"][kind_key] == "yarn" and other not in model["rope_scaling"]
    model["rope_scaling"] = {**model["rope_scaling"], "factor": factor}
    model["max_position_embeddings"] = 256
    (tmp_path / "long.yaml").write_text(yaml.safe_dump({"model": model}))
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}+{i}="},
                                                     {"role": "assistant", "content": str(2 * i)}]}) + "\n"
                            for i in range(rows)))
    run = str(tmp_path / "run")
    assert r1mega(["sft", "--config", os.path.join(ROOT, "configs/stage/distillation.yaml"), "--config",
                   str(tmp_path / "long.yaml"), f"train.load={ckpt}", f"data.paths=[{data}]", "data.sft_template=raw",
                   "data.seq_length=32", "data.global_batch_size=2", "train.steps=1", "train.dtype=float32",
                   "optim.warmup_steps=0", "train.allow_arch_change=[rope_scaling,max_position_embeddings]",
                   f"train.run_dir={run}"]) == 0
    return ckpt, run


def test_export_after_training_writes_the_trained_model_s_config(tmp_path, capsys):
    """An SFT that lengthened the rope (train.allow_arch_change) exported the import's config.json
    (factor 8, 128 positions) beside the trained weights, a silently different model; a GRPO
    checkpoint exported a config.json without the import's token ids. Both now export the config of
    the model they hold, the imported file's other keys kept, and verify-hf of the export against the
    checkpoint passes (over long inputs that include the pad token, which transformers never trains)."""

    hf = save_hf(str(tmp_path / "hf"), "Llama", num_attention_heads=4, num_key_value_heads=1, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})
    ckpt, run = _sft_with_a_longer_rope(tmp_path, hf, 16.0, 8)
    step = os.path.join(run, "checkpoints", "step_00000001")
    exported = str(tmp_path / "exported")
    assert convert(["export", "--ckpt", step, "--out", exported]) == 0
    with open(os.path.join(hf, "config.json")) as f:
        original = json.load(f)
    with open(os.path.join(exported, "config.json")) as f:
        written = json.load(f)
    assert written["rope_parameters"]["factor"] == 16.0 and written["max_position_embeddings"] == 256
    assert {k: written.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "dtype")} == \
        {k: original[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "dtype")}
    capsys.readouterr()
    assert r1mega(["verify-hf", "--hf-dir", exported, "--ckpt", step, "--seq-length", "200"]) == 0

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n" for i in range(2)))
    grpo_run = str(tmp_path / "grpo")
    assert r1mega(["grpo", "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml"), f"train.load={ckpt}",
                   f"rl.prompts=[{prompts}]", "rl.template=raw", "rl.group_size=2", "rl.prompts_per_step=2",
                   "rl.minibatches=1", "rl.max_new_tokens=4", "rl.max_new_tokens_schedule=[]", "train.steps=1",
                   "train.dtype=float32", f"train.run_dir={grpo_run}"]) == 0
    grpo_exported = str(tmp_path / "grpo_exported")
    assert convert(["export", "--ckpt", os.path.join(grpo_run, "checkpoints", "step_00000001"),
                    "--out", grpo_exported]) == 0
    with open(os.path.join(grpo_exported, "config.json")) as f:
        assert json.load(f) == original


def test_generate_with_a_config_that_gives_no_model_takes_the_checkpoint_s(tmp_path, capsys):
    """`generate --model CKPT --config YAML` with a YAML of data keys only (its help: "the model shapes
    (when the checkpoint lacks them) and data.tokenizer") built DeepSeek-V3's default model over an
    imported Qwen2 and failed on the embedding's shape; a family the YAML names must be the checkpoint's."""
    hf = save_hf(str(tmp_path / "hf"), "Qwen2", num_attention_heads=4, num_key_value_heads=2)
    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    (tmp_path / "data.yaml").write_text(f"data:\n  tokenizer: {hf}\n")
    (tmp_path / "family.yaml").write_text("model:\n  family: deepseek_v32\n")
    args = ["--prompts", str(prompts), "--samples", "1", "--max-new-tokens", "3", "--temperature", "0"]
    assert r1mega(["generate", "--model", ckpt, "--config", str(tmp_path / "data.yaml"),
                   "--out", str(tmp_path / "a"), *args]) == 0
    assert r1mega(["generate", "--model", hf, "--out", str(tmp_path / "b"), *args]) == 0
    read = [json.loads(open(os.path.join(tmp_path, d, "shard-00000.jsonl")).readline())["completion"] for d in "ab"]
    assert read[0] == read[1]
    capsys.readouterr()
    assert r1mega(["generate", "--model", ckpt, "--config", str(tmp_path / "family.yaml"), "--tokenizer", hf,
                   "--out", str(tmp_path / "c"), *args]) == 2
    assert "'model.family'" in error_line(capsys)


def test_dry_run_plans_the_model_train_load_holds(tmp_path, capsys):
    """`r1mega grpo --dry-run ... train.load=CKPT` with no model section planned DeepSeek-V3's default
    model (2 layers / 8 experts, 139,168 parameters) for an imported Llama; it plans the Llama now,
    its parameter count transformers'."""
    import transformers

    hf = save_hf(str(tmp_path / "hf"), "Llama", num_attention_heads=4, num_key_value_heads=1, attention_bias=True)
    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    capsys.readouterr()
    assert r1mega(["grpo", "--dry-run", "--world", "2", "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml"),
                   f"train.load={ckpt}", f"rl.prompts=[{prompts}]", "parallel.tp=2",
                   # responses that fit the tiny model's 128 positions (the run refuses the stage's 32K / 64K)
                   "rl.max_new_tokens=64", "rl.max_new_tokens_schedule=[]"]) == 0
    out = capsys.readouterr().out
    total = int(next(line for line in out.splitlines() if line.startswith("total_params=")).split("=")[1])
    assert total == transformers.AutoModelForCausalLM.from_pretrained(hf).num_parameters()
    assert "0 experts" in out


def test_train_load_of_what_is_not_a_checkpoint_says_what_it_is(tmp_path, capsys):
    """A stage config (model taken from train.load) given an HF directory, a run directory or a
    checkpoints root said only "is not a checkpoint (no meta.json)"; the advice the trainer had for
    them (import it; name a step) was never reached on that path."""
    hf = save_hf(str(tmp_path / "hf"), "Qwen2", num_attention_heads=4, num_key_value_heads=2)
    (tmp_path / "run" / "checkpoints" / "step_00000002").mkdir(parents=True)
    stage = ["grpo", "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml"), "rl.prompts=[p.jsonl]",
             f"train.run_dir={tmp_path / 'out'}"]
    for load, said in ((hf, "r1mega-convert import --hf-dir"), (tmp_path / "run", "is a run directory"),
                       (tmp_path / "run" / "checkpoints", "is a checkpoints directory"),
                       (tmp_path / "nowhere", "no such checkpoint directory")):
        assert r1mega([*stage, f"train.load={load}"]) == 2
        line = error_line(capsys)
        assert "'train.load'" in line and said in line, line


def test_a_tied_deepseek_model_is_refused_by_key(tmp_path, capsys):
    """DeepSeek-V3 with tie_word_embeddings=true (transformers saves no lm_head): the family read the
    key but always built an untied head, so import and verify-hf failed on a 'missing' lm_head.weight,
    and a config with the key trained an untied model; refused by name now."""
    hf = save_hf(str(tmp_path / "hf"), "DeepseekV3", n_routed_experts=4, num_experts_per_tok=2, n_group=2,
                 topk_group=1, tie_word_embeddings=True, **DEEPSEEK)
    assert convert(["import", "--hf-dir", hf, "--out", str(tmp_path / "ckpt")]) == 2
    assert "'model.tie_word_embeddings'" in error_line(capsys)
    assert r1mega(["verify-hf", "--hf-dir", hf]) == 2
    assert "'model.tie_word_embeddings'" in error_line(capsys)


def test_a_model_section_of_its_own_over_another_model_is_refused_before_anything_else(tmp_path, capsys):
    """One model key given (`model.max_position_embeddings=1024`, to lengthen an imported Llama) makes the
    config's model DeepSeek-V3's defaults with that key. GRPO and SFT then said the checkpoint's tokenizer
    had more tokens than `model.vocab_size=256`, pretraining that 256 was too small for its corpus, `plan`
    and `--dry-run` sized the DeepSeek model without a word, and `generate --config` failed on the
    embedding's shape: each now names the checkpoint's model first, as its load would."""
    hf = save_hf(str(tmp_path / "hf"), "Llama", num_attention_heads=4, num_key_value_heads=1)
    ckpt = str(tmp_path / "ckpt")
    assert convert(["import", "--hf-dir", hf, "--out", ckpt]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    (tmp_path / "sft.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "1+1="},
                                                                 {"role": "assistant", "content": "2"}]}) + "\n")
    (tmp_path / "demo.yaml").write_text("model:\n  max_position_embeddings: 1024\n")
    longer = [f"train.load={ckpt}", "model.max_position_embeddings=1024", f"train.run_dir={tmp_path / 'run'}"]
    stage = lambda name: os.path.join(ROOT, "configs", "stage", name)  # noqa: E731
    for argv in (["grpo", "--config", stage("r1_zero.yaml"), f"rl.prompts=[{prompts}]", *longer],
                 ["grpo", "--dry-run", "--config", stage("r1_zero.yaml"), f"rl.prompts=[{prompts}]", *longer],
                 ["sft", "--config", stage("cold_start_sft.yaml"), f"data.paths=[{tmp_path / 'sft.jsonl'}]",
                  "data.seq_length=64", *longer],
                 ["pretrain", "--config", os.path.join(ROOT, "configs", "tiny", "pretrain.yaml"),
                  f"data.cache_dir={tmp_path / 'data'}", "model.vocab_size=384", *longer],
                 ["plan", "--config", stage("r1_zero.yaml"), "--seq-length", "64", *longer[:2]],
                 ["generate", "--model", ckpt, "--config", str(tmp_path / "demo.yaml"), "--prompts", str(prompts),
                  "--out", str(tmp_path / "gen"), "--max-new-tokens", "2"]):
        capsys.readouterr()
        assert r1mega(argv) == 2, argv
        line = error_line(capsys)
        assert "holds a dense model, but the config builds a deepseek_v3 model" in line, (argv[0], line)
        assert "drop the config's model section" in line
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "data")
    # without the model section the checkpoint's model is planned
    capsys.readouterr()
    assert r1mega(["plan", "--config", stage("r1_zero.yaml"), "--seq-length", "64", f"train.load={ckpt}"]) == 0


def test_a_deepseek_rope_spelled_as_deepseek_ships_it_survives_an_export_after_training(tmp_path, capsys):
    """DeepSeek's config.json spells the rope kind `"type": "yarn"` (transformers 4). After a longer rope
    (train.allow_arch_change) the export writes transformers 5's `rope_parameters`, which name the kind
    `rope_type` too; read back, that rope had one key more than the checkpoint's, so `verify-hf --ckpt`
    refused the export as "another model", as did a run from the re-import under the trained model's
    config. The kind spelled either way is one setting now, and the export writes the rope in the spelling
    of the file imported (it wrote only `rope_parameters`, which older readers ignore)."""

    hf = save_hf(str(tmp_path / "hf"), "DeepseekV3", n_routed_experts=4, num_experts_per_tok=2, n_group=2,
                 topk_group=1, **DEEPSEEK)
    yarn = {"beta_fast": 32, "beta_slow": 1, "factor": 4, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 32, "type": "yarn"}
    edit_config(hf, rope_parameters=KeyError, rope_scaling=yarn, rope_theta=10000)
    ckpt, run = _sft_with_a_longer_rope(tmp_path, hf, 8.0, 4, kind_key="type")
    step = os.path.join(run, "checkpoints", "step_00000001")
    exported = str(tmp_path / "exported")
    assert convert(["export", "--ckpt", step, "--out", exported]) == 0
    with open(os.path.join(exported, "config.json")) as f:
        written = json.load(f)
    # in the imported file's spelling: what reads only those keys would run the default rope (theta 10000)
    assert written["rope_scaling"]["factor"] == 8.0 and written["rope_theta"] == 10000
    assert "rope_parameters" not in written and written["max_position_embeddings"] == 256
    capsys.readouterr()
    assert r1mega(["verify-hf", "--hf-dir", exported, "--ckpt", step, "--seq-length", "40"]) == 0, capsys.readouterr()
    assert "PASS" in capsys.readouterr().out
    # a new run from the re-imported export under the trained model's config
    again = str(tmp_path / "again")
    assert convert(["import", "--hf-dir", exported, "--out", again]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    assert r1mega(["grpo", "--dry-run", "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml"), "--config",
                   str(tmp_path / "long.yaml"), f"train.load={again}", f"rl.prompts=[{prompts}]",
                   "rl.max_new_tokens=64", "rl.max_new_tokens_schedule=[]"]) == 0
    # a real difference of the rope is still named
    capsys.readouterr()
    assert r1mega(["grpo", "--dry-run", "--config", os.path.join(ROOT, "configs/stage/r1_zero.yaml"), "--config",
                   str(tmp_path / "long.yaml"), f"train.load={ckpt}", f"rl.prompts=[{prompts}]",
                   "rl.max_new_tokens=64", "rl.max_new_tokens_schedule=[]"]) == 2
    assert "model.rope_scaling" in capsys.readouterr().err


def test_a_rerun_naming_the_same_model_spelled_otherwise_does_not_warn(tmp_path, capsys):
    """A resumed run warns when train.load names another model than its own checkpoint; the same DeepSeek
    model imported from its own config.json (rope kind `type`, transformers 4) and from a transformers 5
    copy (`rope_type`) compared unequal, a warning that it was another model."""
    from r1mega.config import load_config
    from r1mega.train.setup import model_from_checkpoint

    new = save_hf(str(tmp_path / "new"), "DeepseekV3", n_routed_experts=4, num_experts_per_tok=2, n_group=2,
                  topk_group=1, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                 "original_max_position_embeddings": 32}, **DEEPSEEK)
    old = str(tmp_path / "old")
    shutil.copytree(new, old)
    edit_config(old, rope_parameters=KeyError, rope_theta=10000.0,
                rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})
    for name in ("new", "old"):
        assert convert(["import", "--hf-dir", str(tmp_path / name), "--out", str(tmp_path / f"{name}_ck")]) == 0
    capsys.readouterr()
    stage = os.path.join(ROOT, "configs", "stage", "r1_zero.yaml")
    model_from_checkpoint(load_config(stage, [f"train.load={tmp_path / 'new_ck'}"]), str(tmp_path / "old_ck"))
    assert "warning" not in capsys.readouterr().err
    shutil.copytree(old, str(tmp_path / "other"))  # a real difference still warns
    edit_config(str(tmp_path / "other"), rope_scaling={"type": "yarn", "factor": 8.0,
                                                       "original_max_position_embeddings": 32})
    assert convert(["import", "--hf-dir", str(tmp_path / "other"), "--out", str(tmp_path / "other_ck")]) == 0
    capsys.readouterr()
    model_from_checkpoint(load_config(stage, [f"train.load={tmp_path / 'other_ck'}"]), str(tmp_path / "old_ck"))
    assert "warning: train.load=" in capsys.readouterr().err
