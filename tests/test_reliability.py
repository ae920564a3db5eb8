"""Hostile-user probes: every bad input ends in a named error (or a correct recovery) and nothing
on disk is lost. Each probe asserts the message and that the files it was given are unchanged.

Most probes are config/CLI-level and build nothing; the checkpoint probes share one tiny trained
run (two checkpoints) that each copies, damages and resumes, in-process.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from r1mega import cli
from r1mega.config import load_config
from r1mega.data.pretrain import write_indexed
from r1mega.errors import CheckpointError, ConfigError, TrainingError
from r1mega.models.weights import crc32
from r1mega.train.checkpoint import ArchitectureMismatch
from r1mega.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 64

TINY = {
    "model": dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_layers=2,
                  num_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4,
                  v_head_dim=8, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
                  topk_group=1, first_k_dense_replace=1, num_mtp_layers=0, routed_scaling_factor=2.5),
    "data": dict(seq_length=8, micro_batch_size=2, global_batch_size=2),
    "optim": dict(lr=1e-3, min_lr=1e-4),
    "train": dict(steps=2, save_interval=1),
}


# ---- helpers --------------------------------------------------------------------------------

def snapshot(path, skip=()) -> dict:
    """relative path -> sha256 of every file under path (or of path itself)."""
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), path)
            if rel not in skip:
                out[rel] = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
    return out


def nothing_lost(before: dict, after: dict) -> None:
    """Every earlier file's content is still there (possibly moved aside by a recovery)."""
    missing = [k for k, h in before.items() if h not in set(after.values())]
    assert not missing, missing


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    write_indexed(str(root / "good"), [rng.integers(0, VOCAB, 40).tolist() for _ in range(20)], VOCAB)
    return str(root / "good")


def overrides(run_dir, corpus, extra=()):
    flat = [f"{sec}.{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
            for sec, kv in TINY.items() for k, v in kv.items()]
    return flat + [f"data.paths=[{corpus}]", f"train.run_dir={run_dir}", *extra]


def run_train(run_dir, corpus, *extra):
    return train(load_config(None, overrides(run_dir, corpus, extra)), "pretrain")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus):
    """A finished tiny run: checkpoints at steps 1 and 2."""
    run = str(tmp_path_factory.mktemp("base") / "run")
    out = run_train(run, corpus)
    assert len(out["losses"]) == 2 and all(np.isfinite(out["losses"]))
    return run


@pytest.fixture
def run_copy(base_run, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(base_run, dst)
    return dst


def ck(run, step):
    return os.path.join(run, "checkpoints", f"step_{step:08d}")


@pytest.fixture(scope="module")
def yaml_config(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg = {sec: dict(kv) for sec, kv in TINY.items()}
    cfg["data"]["paths"] = [corpus]
    OmegaConf.save(OmegaConf.create(cfg), path)
    return str(path)


def cli_error(capsys, argv) -> str:
    """Run the r1mega command in-process; it must fail with exit 2 and one `error:` line, no traceback."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


# ---- configuration: named before anything is touched -------------------------------------

@pytest.mark.parametrize("override, key, text", [
    ("optim.decay=exp", "optim.decay", "expected cosine, constant or linear, got 'exp'"),
    ("data.seq_length=0", "data.seq_length", "must be >= 1, got 0"),
    ("data.micro_batch_size=0", "data.micro_batch_size", "must be >= 1, got 0"),
    ("data.global_batch_size=-4", "data.global_batch_size", "must be >= 1, got -4"),
    ("model.moe_intermediate_size=0", "model.moe_intermediate_size", "must be > 0"),
    ("data.weights=[-1.0]", "data.weights[0]", "finite weight >= 0, got -1.0"),
    ("model.num_experts_per_tok=0", "model.num_experts_per_tok", "must be >= 1"),
    ("model.topk_method=bogus", "model.topk_method", "noaux_tc, greedy or group_limited_greedy"),
    ("model.q_lora_rank=0", "model.q_lora_rank", "must be > 0 or null"),
    ("model.rope_theta=-1", "model.rope_theta", "must be > 0"),
    ("model.routed_scaling_factor=0", "model.routed_scaling_factor", "must be > 0"),
    ("model.first_k_dense_replace=-1", "model.first_k_dense_replace", "must be >= 0"),
    ("model.moe_layer_freq=0", "model.moe_layer_freq", "must be >= 1"),
    ("model.max_position_embeddings=0", "model.max_position_embeddings", "must be > 0"),
    ("model.rms_norm_eps=0", "model.rms_norm_eps", "must be > 0"),
    ("model.rope_scaling={type: ntk, factor: 2}", "model.rope_scaling.type", "expected default or yarn"),
    ("model.rope_scaling={type: yarn, factor: 4}", "model.rope_scaling.original_max_position_embeddings",
     "positive integer"),
    ("model.rope_scaling={type:yarn}", "model.rope_scaling", "unknown key 'type:yarn'"),
    ("optim.lr=-0.1", "optim.lr", "must be >= 0"),
    ("optim.min_lr=1", "optim.min_lr", "above optim.lr"),
    ("optim.beta2=1.5", "optim.beta2", "must be in [0, 1)"),
    ("optim.eps=0", "optim.eps", "must be > 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps", "must be >= 0"),
    ("optim.clip_grad=-1", "optim.clip_grad", "must be >= 0"),
    ("train.log_interval=0", "train.log_interval", "must be >= 1"),
    ("train.save_interval=-1", "train.save_interval", "must be >= 0"),
    ("train.max_consecutive_skips=-1", "train.max_consecutive_skips", "must be >= 0"),
    ("train.mtp_weight=-1", "train.mtp_weight", "must be >= 0"),
    ("train.allow_arch_change=[bogus]", "train.allow_arch_change", "'bogus' is not a model key"),
    ("train.steps=0", "train.steps", "must be >= 1"),
    ("data.synthetic=bogus", "data.synthetic", "expected arithmetic, addition or sum3"),
    ("seed=-1", "seed", "must be >= 0"),
])
def test_bad_key_is_named_before_anything_is_touched(capsys, tmp_path, yaml_config, override, key, text):
    run = tmp_path / "run"
    err = cli_error(capsys, ["pretrain", "--config", yaml_config, f"train.run_dir={run}", override])
    assert f"config error at '{key}'" in err and text in err, err
    assert "exceeds" not in err
    assert not run.exists()  # nothing created


@pytest.mark.parametrize("text, message", [
    ("model:\n  hidden_size: [1,\n", ":3: not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping of sections"),
    ("model:\n  hidden_sise: 3\n", "config error at 'model.hidden_sise'"),
])
def test_bad_yaml_file_is_named(capsys, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = cli_error(capsys, ["pretrain", "--config", str(path)])
    assert message in err and (str(path) in err or "hidden_sise" in err), err


def test_hf_config_missing_a_key_is_named(capsys, tmp_path, hf_dir):
    src = tmp_path / "hf"
    shutil.copytree(hf_dir, src)
    cfg = json.load(open(src / "config.json"))
    del cfg["hidden_size"]
    json.dump(cfg, open(src / "config.json", "w"))
    err = cli_error(capsys, ["verify-hf", "--hf-dir", str(src)])
    assert f"config error at '{src}/config.json': missing key 'hidden_size'" in err


def test_validation_errors_in_config_api_are_config_errors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="'data.global_batch_size': 6 is not a multiple"):
        run_train(tmp_path / "r", corpus, "data.global_batch_size=6", "data.micro_batch_size=4")


def test_num_experts_per_tok_too_many_still_says_exceeds():
    from r1mega.config import Config, ModelConfig, validate

    with pytest.raises(ConfigError, match="9 exceeds the 8 experts"):
        validate(Config(model=ModelConfig(num_experts_per_tok=9)), 1)


def test_debug_flag_and_env_show_the_traceback(tmp_path, yaml_config, capsys, monkeypatch):
    argv = ["pretrain", "--config", yaml_config, f"train.run_dir={tmp_path}", "optim.decay=exp"]
    with pytest.raises(ConfigError):
        cli.main(argv + ["--debug"])
    monkeypatch.setenv("R1MEGA_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli.main(argv)


def test_cli_process_exit_status_and_single_line(tmp_path, yaml_config):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    env.pop("R1MEGA_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "r1mega.cli", "pretrain", "--config", yaml_config,
                           f"train.run_dir={tmp_path}/run", "data.seq_length=0"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config error at 'data.seq_length': must be >= 1, got 0"]


# ---- data: file:line or file and offset ---------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from r1mega.data.tokenizer import train_sentencepiece

    texts = [f"Q: {a}+{b}= A: {a + b}" for a in range(20) for b in range(20)]
    return train_sentencepiece(texts, str(tmp_path_factory.mktemp("tok") / "t"), 320)


def _sft_line():
    return json.dumps({"messages": [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"}]})


@pytest.mark.parametrize("name, content, text", [
    ("empty", b"", "no conversations (the file is empty"),
    ("blank", b"\n\n", "no conversations"),
    ("latin1", (_sft_line() + "\n").encode() + b'{"messages": "caf\xe9"}\n', ":2: not UTF-8 (byte 0xe9 at column 18)"),
    ("missing", None, "cannot open"),
])
def test_bad_sft_file_is_named(capsys, tmp_path, yaml_config, tokenizer, name, content, text):
    path = tmp_path / f"{name}.jsonl"
    if content is not None:
        path.write_bytes(content)
    before = snapshot(str(tmp_path))
    err = cli_error(capsys, ["sft", "--config", yaml_config, f"train.run_dir={tmp_path}/run",
                             f"data.paths=[{path}]", f"data.tokenizer={tokenizer}", "model.vocab_size=320"])
    assert str(path) in err and text in err, err
    assert snapshot(str(tmp_path)) == before


def _indexed(tmp_path, name, docs):
    prefix = str(tmp_path / name)
    write_indexed(prefix, docs, 65000)
    return prefix


@pytest.mark.parametrize("damage, text", [
    ("vocab", "token id 99 at token 43 (document 1) is outside model.vocab_size 64"),
    ("bin", "truncated"),
    ("idx", "truncated"),
    ("idx_header", "not a Megatron index file"),
    ("missing", "not found"),
    ("suffix", "without the extension"),
    ("short", "cannot fill one sample"),
])
def test_bad_indexed_data_is_named_up_front(capsys, tmp_path, yaml_config, damage, text):
    docs = [list(range(1, 41)), [5] * 3 + [99] + [5] * 36]
    prefix = _indexed(tmp_path, "d", docs if damage == "vocab" else [list(range(1, 41))] * 2)
    if damage == "short":
        prefix = _indexed(tmp_path, "d", [[1, 2, 3]])
    if damage in ("bin", "idx"):
        path = f"{prefix}.{damage}"
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) - 10])
    if damage == "idx_header":
        open(prefix + ".idx", "wb").write(b"garbage")
    if damage == "missing":
        os.remove(prefix + ".bin")
    if damage == "suffix":
        prefix += ".bin"
    before = snapshot(str(tmp_path))
    err = cli_error(capsys, ["pretrain", "--config", yaml_config, f"train.run_dir={tmp_path}/run",
                             f"data.paths=[{prefix}]"])
    assert prefix in err and text in err, err
    assert snapshot(str(tmp_path)) == before and not (tmp_path / "run").exists()


def test_preprocess_failure_leaves_existing_outputs_untouched(tmp_path, tokenizer, capsys):
    from tools.preprocess_data import main as preprocess

    good = tmp_path / "docs.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"Q: {i}+1= A: {i + 1}"}) for i in range(30)) + "\n")
    args = ["--tokenizer", tokenizer, "--output-prefix", str(tmp_path / "out" / "corpus")]
    os.makedirs(tmp_path / "out")
    assert preprocess(args + ["--input", str(good)]) == 0
    before = snapshot(str(tmp_path / "out"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good.read_bytes() + b'{"text": "\xff"}\n')
    for inputs, text in (([str(bad)], f"{bad}:31: not UTF-8"),
                         ([str(good), str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file")):
        capsys.readouterr()
        assert preprocess(args + ["--input", *inputs]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and text in err, err
        assert snapshot(str(tmp_path / "out")) == before  # no truncation
        assert sorted(os.listdir(tmp_path / "out")) == ["corpus.bin", "corpus.idx"]  # no temp files left


# ---- checkpoints: verified, with fallback, never overwritten ------------------------------

def _rewrite_piece(path, mutate, fix_crc=True):
    """Rewrite one rank file through `mutate(tensors)`; optionally record the new checksums."""
    st = os.path.join(path, "rank00000.safetensors")
    with safe_open(st, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mutate(tensors)
    save_file(tensors, st)
    if fix_crc:
        listing = json.load(open(os.path.join(path, "rank00000.json")))
        for k, t in tensors.items():
            listing[k]["crc32"] = crc32(t)
        json.dump(listing, open(os.path.join(path, "rank00000.json"), "w"))


def _flip_bytes(path):
    st = os.path.join(path, "rank00000.safetensors")
    raw = bytearray(open(st, "rb").read())
    for i in range(len(raw) - 400, len(raw) - 300):
        raw[i] ^= 0x5A
    open(st, "wb").write(bytes(raw))


def _swap(tensors):
    a, b = "model/model.layers.1.mlp.experts.0.up_proj.weight", "model/model.layers.1.mlp.experts.1.up_proj.weight"
    tensors[a], tensors[b] = tensors[b], tensors[a]


def _nan(tensors):
    tensors["model/model.norm.weight"][3] = float("nan")


DAMAGE = {
    "random_bytes": (_flip_bytes, "fails its checksum"),
    "truncated_safetensors": (lambda p: open(os.path.join(p, "rank00000.safetensors"), "r+b").truncate(5000),
                              "rank00000.safetensors: "),
    "meta_bad_json": (lambda p: open(os.path.join(p, "meta.json"), "w").write("{\"step\": 2,"),
                      "meta.json: not valid JSON"),
    "meta_missing": (lambda p: os.remove(os.path.join(p, "meta.json")), "meta.json: missing"),
    "pieces_bad_json": (lambda p: open(os.path.join(p, "rank00000.json"), "w").write("[1, 2"),
                        "rank00000.json: not valid JSON"),
    "nan_with_valid_checksum": (lambda p: _rewrite_piece(p, _nan), "model.norm.weight holds NaN or Inf"),
    "swapped_tensors": (lambda p: _rewrite_piece(p, _swap, fix_crc=False), "experts.0.up_proj.weight' fails its checksum"),
    "rng_garbage": (lambda p: open(os.path.join(p, "rng.pt"), "wb").write(b"junk"), "rng.pt: unreadable"),
    "meta_negative_step": (lambda p: json.dump({"step": -5}, open(os.path.join(p, "meta.json"), "w")),
                           "integer 'step' >= 0"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(run_copy, corpus, capsys, damage):
    newest = ck(run_copy, 2)
    DAMAGE[damage][0](newest)
    before = snapshot(run_copy, skip=("checkpoints/latest", "metrics.jsonl"))
    out = run_train(run_copy, corpus, "train.steps=3")
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is unusable" in err and DAMAGE[damage][1] in err, err
    assert "falling back to the previous one" in err
    assert len(out["losses"]) == 2 and all(np.isfinite(out["losses"]))  # resumed at step 1, trained 2 and 3
    nothing_lost(before, snapshot(run_copy))
    assert os.path.isdir(newest + ".replaced")  # the damaged step 2 was moved aside, not overwritten
    steps = [json.loads(line)["step"] for line in open(os.path.join(run_copy, "metrics.jsonl"))]
    assert steps == [1, 2, 3]  # step 2 was trained again and is recorded once


def test_latest_naming_a_missing_directory_falls_back(run_copy, corpus, capsys):
    open(os.path.join(run_copy, "checkpoints", "latest"), "w").write("step_00000009")
    out = run_train(run_copy, corpus, "train.steps=3")
    err = capsys.readouterr().err
    assert "step_00000009 is unusable" in err and "meta.json: missing" in err
    assert len(out["losses"]) == 1  # resumed from step 2


@pytest.mark.parametrize("pointer", ["", "not_a_step"])
def test_latest_naming_no_step_falls_back_to_the_newest_step(run_copy, corpus, capsys, pointer):
    open(os.path.join(run_copy, "checkpoints", "latest"), "w").write(pointer)
    out = run_train(run_copy, corpus, "train.steps=3")
    assert "is unusable" in capsys.readouterr().err and len(out["losses"]) == 1  # resumed from step 2


def test_missing_train_load_is_named(capsys, tmp_path, yaml_config):
    err = cli_error(capsys, ["pretrain", "--config", yaml_config, f"train.run_dir={tmp_path}/run",
                             f"train.load={tmp_path}/nope"])
    assert f"train.load={tmp_path}/nope: no such checkpoint directory" in err
    assert not (tmp_path / "run").exists()


def test_full_disk_during_save_is_named_and_keeps_the_previous(run_copy, corpus, monkeypatch):
    import errno

    import r1mega.train.checkpoint as checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    before = snapshot(run_copy, skip=("metrics.jsonl",))
    with pytest.raises(CheckpointError, match="No space left on device.*step 3 was not saved"):
        run_train(run_copy, corpus, "train.steps=3")
    after = snapshot(run_copy, skip=("metrics.jsonl",))
    assert {k: v for k, v in after.items() if not k.startswith("checkpoints/.step_")} == before


def test_no_usable_checkpoint_is_an_error_and_nothing_changes(run_copy, corpus):
    _flip_bytes(ck(run_copy, 2))
    _flip_bytes(ck(run_copy, 1))
    before = snapshot(run_copy)
    with pytest.raises(CheckpointError, match="no usable checkpoint among"):
        run_train(run_copy, corpus, "train.steps=3")
    assert snapshot(run_copy) == before


def test_verify_checkpoint_false_skips_the_checksum(run_copy, corpus, capsys):
    _rewrite_piece(ck(run_copy, 2), _swap, fix_crc=False)
    out = run_train(run_copy, corpus, "train.steps=3", "train.verify_checkpoint=false")
    assert "unusable" not in capsys.readouterr().err and len(out["losses"]) == 1


def test_missing_latest_is_refused_not_overwritten(run_copy, corpus, capsys, yaml_config):
    os.remove(os.path.join(run_copy, "checkpoints", "latest"))
    before = snapshot(run_copy)
    err = cli_error(capsys, ["pretrain", "--config", yaml_config, f"train.run_dir={run_copy}", "train.steps=3"])
    assert "checkpoints/latest is missing" in err and "step_00000002, step_00000001" in err
    assert "echo step_00000002 >" in err and "another train.run_dir" in err
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("override, stored, given", [
    ("model.scoring_func=softmax", "'sigmoid'", "'softmax'"),
    ("model.topk_method=greedy", "'noaux_tc'", "'greedy'"),
    ("model.rope_theta=50000", "10000.0", "50000.0"),
    ("model.routed_scaling_factor=1.0", "2.5", "1.0"),
    ("model.n_group=1", "2", "1"),
])
def test_architecture_change_on_resume_is_refused(run_copy, corpus, capsys, yaml_config, override, stored, given):
    before = snapshot(run_copy)
    key = override.split("=")[0]
    err = cli_error(capsys, ["pretrain", "--config", yaml_config, f"train.run_dir={run_copy}", "train.steps=3",
                             override])
    assert f"{key}: checkpoint {stored}, config {given}" in err, err
    assert f"train.allow_arch_change=[{key.split('.')[1]}]" in err
    assert snapshot(run_copy) == before


def test_deliberate_architecture_change_is_allowed_and_every_difference_listed(run_copy, corpus):
    with pytest.raises(ArchitectureMismatch) as e:
        run_train(run_copy, corpus, "train.steps=3", "model.rope_theta=50000", "model.routed_scaling_factor=1.0")
    assert "model.rope_theta" in str(e.value) and "model.routed_scaling_factor" in str(e.value)
    out = run_train(run_copy, corpus, "train.steps=3", "model.rope_theta=50000",
                    "train.allow_arch_change=[rope_theta]")
    assert len(out["losses"]) == 1 and np.isfinite(out["losses"][0])


@pytest.mark.parametrize("meta_step", [None])  # an edited step fails the manifest: tests/test_output_safety.py
def test_finished_run_says_it_is_complete(run_copy, corpus, capsys, yaml_config, meta_step):
    before = snapshot(run_copy)
    rc = cli.main(["pretrain", "--config", yaml_config, f"train.run_dir={run_copy}"])
    out = capsys.readouterr().out
    assert rc == 0 and "nan" not in out
    assert f"is complete: {ck(run_copy, 2)} is at step {meta_step or 2} and train.steps=2" in out
    assert "raise train.steps" in out
    assert snapshot(run_copy) == before


def test_save_refuses_non_finite_weights(tmp_path):
    from r1mega.config import Config, ModelConfig, validate
    from r1mega.parallel.layout import single_process_state
    from r1mega.train.checkpoint import save_checkpoint
    from r1mega.train.optimizer import DistributedAdamW
    from r1mega.train.setup import build_chunks, init_weights

    cfg = validate(Config(model=ModelConfig(**TINY["model"])), 1)
    ps = single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, 0)
    opt = DistributedAdamW(chunks, ps, cfg.optim)
    with torch.no_grad():
        chunks[0].norm.weight[0] = float("inf")
    opt.reset_from_params()
    with pytest.raises(CheckpointError, match=r"refusing to save step 5 .*model/model.norm.weight"):
        save_checkpoint(str(tmp_path / "ck"), 5, chunks, opt, ps, {})
    assert not (tmp_path / "ck").exists()


def test_non_finite_run_stops_after_max_consecutive_skips(tmp_path, corpus):
    with pytest.raises(TrainingError, match=r"steps 2\.\.4 all had a non-finite loss or gradient "
                                            r"\(train.max_consecutive_skips=3\)") as e:
        run_train(tmp_path / "run", corpus, "train.steps=20", "optim.lr=1e30", "optim.min_lr=0",
                  "optim.clip_grad=0", "train.max_consecutive_skips=3")
    # skipped steps leave the weights as they were, so their checkpoints are good; step 4 is not saved
    newest = str(e.value).split("The newest checkpoint is ")[1].split(";")[0]
    assert newest == ck(str(tmp_path / "run"), 3)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints"))[-1] == "step_00000003"


# ---- the converter never deletes what it did not create -----------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tiny_hf import make_hf_model

    src = str(tmp_path_factory.mktemp("hf") / "hf")
    make_hf_model("DeepseekV3", n_group=2, topk_group=1).save_pretrained(src)
    return src


def _convert(*argv):
    from tools.convert import main

    return main(list(argv))


def test_convert_leaves_foreign_siblings_alone(tmp_path, hf_dir):
    out = tmp_path / "ck"
    for sibling in ("ck.old", "ck.converting"):
        os.makedirs(tmp_path / sibling)
        (tmp_path / sibling / "mine.txt").write_text("precious")
    before = snapshot(str(tmp_path))
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(out)) == 0
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(out), "--overwrite") == 0
    after = snapshot(str(tmp_path))
    assert {k: v for k, v in after.items() if not k.startswith("ck/")} == before  # siblings intact
    assert sorted(os.listdir(tmp_path)) == ["ck", "ck.converting", "ck.old"]  # and no leftovers


def test_convert_refuses_non_finite_tensors_and_cleans_only_its_own(tmp_path, hf_dir, capsys):
    src = tmp_path / "nan"
    shutil.copytree(hf_dir, src)
    st = str(src / "model.safetensors")
    with safe_open(st, "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"][0, 0] = float("inf")
    save_file(sd, st, metadata={"format": "pt"})
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(tmp_path / "ck")) == 0  # a good earlier result
    before = snapshot(str(tmp_path))
    rc = _convert("import", "--hf-dir", str(src), "--out", str(tmp_path / "ck"), "--overwrite")
    err = capsys.readouterr().err
    assert rc == 2 and "kv_a_proj_with_mqa.weight holds NaN or Inf" in err and st in err, err
    assert snapshot(str(tmp_path)) == before and sorted(os.listdir(tmp_path)) == ["ck", "nan"]


def test_convert_overwrite_replaces_only_its_own_output(tmp_path, hf_dir, capsys):
    users = tmp_path / "users"
    os.makedirs(users)
    (users / "notes.txt").write_text("precious")
    before = snapshot(str(tmp_path))
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(users), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "replaces only a directory r1mega-convert wrote" in err and "notes.txt" in err, err
    assert snapshot(str(tmp_path)) == before
    out = tmp_path / "ck"  # its own earlier output, even with a file added since, is replaced as asked
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(out)) == 0
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(out), "--overwrite") == 0
    assert sorted(os.listdir(tmp_path)) == ["ck", "users"]


def test_convert_verify_catches_a_converter_mixup(tmp_path, hf_dir, capsys, monkeypatch):
    import tools.convert as convert

    assert _convert("import", "--hf-dir", hf_dir, "--out", str(tmp_path / "good"), "--verify") == 0
    assert "PASS" in capsys.readouterr().out
    real = convert.PartWriter.add
    a, b = "model/model.layers.1.mlp.experts.0.up_proj.weight", "model/model.layers.1.mlp.experts.1.up_proj.weight"
    monkeypatch.setattr(convert.PartWriter, "add", lambda self, k, t: real(self, {a: b, b: a}.get(k, k), t))
    before = snapshot(str(tmp_path))
    assert _convert("import", "--hf-dir", hf_dir, "--out", str(tmp_path / "bad"), "--verify") == 2
    assert "--verify: r1mega's logits on the converted checkpoint differ" in capsys.readouterr().err
    assert snapshot(str(tmp_path)) == before and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("damage, text", [
    ("config", "config.json: not valid JSON"),
    ("truncated", "unreadable safetensors file"),
])
def test_convert_bad_source_is_named(tmp_path, hf_dir, capsys, damage, text):
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    if damage == "config":
        (src / "config.json").write_text("{")
    else:
        open(src / "model.safetensors", "r+b").truncate(3)
    before = snapshot(str(tmp_path))
    assert _convert("import", "--hf-dir", str(src), "--out", str(tmp_path / "ck")) == 2
    assert text in capsys.readouterr().err
    assert snapshot(str(tmp_path)) == before


def test_convert_refuses_to_write_over_its_input(tmp_path, hf_dir, capsys):
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    before = snapshot(str(tmp_path))
    for out in (src, src / "inside"):
        assert _convert("import", "--hf-dir", str(src), "--out", str(out), "--overwrite") == 2
        assert "overlaps the input" in capsys.readouterr().err
    assert snapshot(str(tmp_path)) == before and sorted(os.listdir(tmp_path)) == ["src"]


def test_export_of_a_damaged_checkpoint_is_named(run_copy, tmp_path, capsys):
    _rewrite_piece(ck(run_copy, 2), _swap, fix_crc=False)
    before = snapshot(str(tmp_path))
    assert _convert("export", "--ckpt", ck(run_copy, 2), "--out", str(tmp_path / "hf")) == 2
    assert "fails its checksum" in capsys.readouterr().err
    assert snapshot(str(tmp_path)) == before


# ---- several ranks: one rank's bad piece, all ranks fall back together; no hang -------------

def fallback_worker(rank: int, world: int, spec: dict) -> dict:
    """Train 2 steps under TP2; damage a piece only TP rank 1 reads; resume to step 3."""
    import torch.distributed as dist
    from train_workers import train_worker

    train_worker(rank, world, spec)
    if rank == 0:
        st = os.path.join(spec["train"]["run_dir"], "checkpoints", "step_00000002", "rank00001.safetensors")
        raw = bytearray(open(st, "rb").read())
        raw[-50] ^= 0xFF
        open(st, "wb").write(bytes(raw))
    dist.barrier()
    return train_worker(rank, world, {**spec, "train": {**spec["train"], "steps": 3}})


@pytest.mark.slow
def test_fallback_is_agreed_across_ranks(tmp_path, corpus):
    from spawn_cases import run_ranks

    spec = {sec: dict(kv) for sec, kv in TINY.items()}
    spec["parallel"] = {"tp": 2}
    spec["data"]["paths"] = [corpus]
    spec["train"]["run_dir"] = str(tmp_path / "run")
    out = run_ranks(fallback_worker, 2, spec)
    assert len(out[0]["losses"]) == 2 and out[0]["losses"] == out[1]["losses"]  # both resumed at step 1


@pytest.mark.slow
def test_torchrun_error_exits_every_rank(tmp_path, yaml_config):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "r1mega.cli",
           "pretrain", "--config", yaml_config, f"train.run_dir={tmp_path}/tr", "parallel.tp=2",
           "data.paths=[/nonexistent/x]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.count("/nonexistent/x.idx: not found") == 2, proc.stderr  # each rank said why, then left
    assert "error: " in proc.stderr and "[rank 1] error: " in proc.stderr
    assert "r1mega/" not in proc.stderr.replace(ROOT, "")  # only torchrun's own report has a traceback
