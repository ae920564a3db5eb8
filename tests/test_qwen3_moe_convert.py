"""Qwen3-MoE checkpoints: `r1mega-convert import` then `export` gives back transformers' files bit for
bit (per-expert tensors, tied or untied head); verify-hf on TP2 x EP2; and from an imported checkpoint
alone (no model section) a GRPO step runs with the R1-Zero stage config (experts replayed from the
rollouts) and `generate` loads its result."""
import json
import os
import subprocess
import sys

import pytest
import torch

from qwen3_moe_hf import SHAPES, VARIANTS, make_qwen3_moe
from r1mega.models.family import family_for_hf, family_from_meta
from test_qwen3 import all_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_convert_round_trip_is_bit_exact(kind, tmp_path):
    from tools.convert import do_export, do_import

    path = str(tmp_path / "hf")
    make_qwen3_moe(kind, path)
    do_import(path, str(tmp_path / "ck"), dtype="float32")
    do_export(str(tmp_path / "ck"), str(tmp_path / "out"))
    a, b = all_tensors(path), all_tensors(str(tmp_path / "out"))
    assert set(a) == set(b) and "model.layers.1.mlp.experts.7.down_proj.weight" in a
    assert ("lm_head.weight" in a) == (kind == "only0_norm_untied")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert family_for_hf(str(tmp_path / "out"))[1] == family_for_hf(path)[1]
    meta = json.load(open(tmp_path / "ck" / "meta.json"))
    family, cfg = family_from_meta(meta)
    assert family.name == "qwen3_moe" and cfg.num_experts == SHAPES["num_experts"] and cfg.mlp_only_layers == VARIANTS[kind].get("mlp_only_layers", [])


def test_verify_hf_tp2_ep2(tmp_path):
    from test_students import verify_on_ranks

    path = str(tmp_path / "hf")
    make_qwen3_moe("only0_norm_untied", path)
    assert verify_on_ranks(4, "--hf-dir", path, "--tp", "2", "--ep", "2") < 1e-4


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_grpo_and_generate_from_an_imported_checkpoint_alone(tmp_path):
    from rl_data import MATH, write_jsonl, write_tokenizer

    hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
    make_qwen3_moe("only0_norm_untied", hf_dir, vocab_size=640, num_hidden_layers=2, max_position_embeddings=512)
    write_tokenizer(hf_dir)
    prompts = write_jsonl(str(tmp_path / "math.jsonl"), MATH)
    run = lambda *args: subprocess.run([sys.executable, *args], env=_env(), cwd=ROOT, capture_output=True,  # noqa: E731
                                       text=True, timeout=600)
    res = run("-m", "tools.convert", "import", "--hf-dir", hf_dir, "--out", ckpt, "--dtype", "float32")
    assert res.returncode == 0, res.stderr
    res = run("-m", "r1mega.cli", "grpo", "--config", os.path.join(ROOT, "configs", "stage", "r1_zero.yaml"),
              f"train.load={ckpt}", f"rl.prompts=[{prompts}]", f"train.run_dir={tmp_path / 'run'}",
              "train.steps=1", "train.dtype=float32", "rl.group_size=2", "rl.prompts_per_step=2",
              "rl.minibatches=1", "rl.max_new_tokens=4", "rl.max_new_tokens_schedule=[]",
              "data.micro_batch_size=4", "data.global_batch_size=4", "train.save_interval=0", "rl.routing_replay=true")
    assert res.returncode == 0, res.stderr[-3000:]
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    family, model_cfg = family_from_meta(json.loads((step / "meta.json").read_text()))
    assert family.name == "qwen3_moe" and model_cfg.vocab_size == 640 and model_cfg.num_experts == 8
    out = tmp_path / "gen"
    res = run("-m", "r1mega.cli", "generate", "--model", str(step), "--tokenizer", hf_dir, "--prompts", prompts,
              "--out", str(out), "--max-new-tokens", "4", "--samples", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for name in sorted(os.listdir(out)) if name.startswith("shard-")
            for line in (out / name).read_text().splitlines()]
    assert len(rows) == len(MATH)


def test_fp8_block_export_quantizes_the_projections_and_reimports_them(tmp_path):
    """`export --fp8-blocks` writes every attention, MLP and expert projection as e4m3 with 128 x 128
    block scales (the format of Qwen's FP8 releases), the router and norms not; importing that
    directory dequantises them exactly and exporting again gives the same bytes."""
    from r1mega.models.fp8 import FP8, dequantize
    from tools.convert import do_export, do_import

    path = str(tmp_path / "hf")
    make_qwen3_moe("only0_norm_untied", path)
    do_import(path, str(tmp_path / "ck"), dtype="float32")
    do_export(str(tmp_path / "ck"), str(tmp_path / "fp8"), fp8_blocks=True)
    fp8 = all_tensors(str(tmp_path / "fp8"))
    quantized = {k for k, v in fp8.items() if v.dtype == FP8}
    assert quantized == {k for k in all_tensors(path) if k.endswith("proj.weight")}
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in quantized and not any(".mlp.gate.weight" in k for k in quantized)
    do_import(str(tmp_path / "fp8"), str(tmp_path / "ck2"), dtype="float32")
    do_export(str(tmp_path / "ck2"), str(tmp_path / "out"))
    back = all_tensors(str(tmp_path / "out"))
    for k in quantized:
        assert torch.equal(back[k].float(), dequantize(fp8[k], fp8[k + "_scale_inv"]).float()), k
    do_export(str(tmp_path / "ck2"), str(tmp_path / "fp8_again"), fp8_blocks=True)
    again = all_tensors(str(tmp_path / "fp8_again"))
    assert set(again) == set(fp8) and all(torch.equal(again[k].view(torch.uint8) if again[k].dtype == FP8 else again[k],
                                                      fp8[k].view(torch.uint8) if fp8[k].dtype == FP8 else fp8[k])
                                          for k in fp8)
