"""Scale probe: `r1mega plan`'s rollout KV cache per GPU against the engine and by hand. Each CP rank
decodes its share of a DP rank's rows (inference/generate.py), but the plan divided the rollout by DP
only: at the README's 1,024-GPU layout (cp 4) it reported 4x the cache a GPU holds, so it read
34.3 GiB where `--cp 1 --dp 8` read 8.6 GiB for the same rows per GPU. It also counted the average
layers per stage (61 / 16 = 3.81) instead of those of the stage holding the most (4), and ignored
`parallel.pp_layers`."""
import os

import pytest
import torch

from r1mega.config import ParallelConfig, load_config
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.plan import plan_for
from tests.scale_probe_workers import rollout_cache_peak
from tests.spawn_cases import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(cfg_path, layout, rollout_batch, rollout_len, **kw):
    cfg = load_config(os.path.join(ROOT, cfg_path), [])
    cfg.parallel = ParallelConfig(**layout)
    world = layout.get("tp", 1) * layout.get("cp", 1) * layout.get("pp", 1) * layout.get("dp", 1)
    return plan_for(cfg, world, 1, 4096, None, rollout_batch=rollout_batch, rollout_len=rollout_len, **kw)


def test_plan_kv_cache_equals_the_engine_s_peak_under_cp2():
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 200, (32,), generator=g).tolist() for _ in range(8)]
    peaks = run_ranks(rollout_cache_peak, 2, 2, prompts, 16)
    # 8 rows of 32 + 16 tokens (the last sampled token is never cached: 47 slots, 3 blocks of 16 each)
    cfg = load_config(os.path.join(ROOT, "configs", "model", "tiny.yaml"), [])
    cfg.model = ModelConfig(num_layers=2, max_position_embeddings=4096)
    cfg.parallel = ParallelConfig(cp=2, dp=1)
    plan = plan_for(cfg, 2, 1, 64, None, rollout_batch=8, rollout_len=48, weight_bytes=4)
    assert peaks == [plan.kv_cache["mla_latent"]] * 2  # 4 rows x 48 tokens x 2 layers x 24 values x 4 bytes


def test_plan_kv_cache_by_hand_for_the_671b_rollout_layouts():
    rows, length, latent = 512, 32768, 512 + 64
    readme = {"tp": 8, "sp": True, "cp": 4, "pp": 16, "ep": 64, "etp": 1, "dp": 2}
    plan = _plan("configs/model/deepseek_v3_671b.yaml", readme, rows, length)
    # 61 layers over 16 stages: the first 13 hold 4; bf16
    assert plan.kv_cache["mla_latent"] == rows * length / (2 * 4) * 4 * latent * 2
    same_rows = _plan("configs/model/deepseek_v3_671b.yaml", {**readme, "cp": 1, "dp": 8}, rows, length)
    assert same_rows.kv_cache == plan.kv_cache  # the same rows per GPU, cp or dp
    uneven = _plan("configs/model/deepseek_v3_671b.yaml", {**readme, "pp": 2, "pp_layers": [1, 60]}, rows, length)
    assert uneven.kv_cache["mla_latent"] == rows * length / 8 * 60 * latent * 2
    v32 = _plan("configs/model/deepseek_v32_671b.yaml", readme, rows, length)
    assert v32.kv_cache["index_keys"] == pytest.approx(plan.kv_cache["mla_latent"] * 128 / latent)


def test_plan_kv_cache_of_a_dense_student_by_hand():
    path = "configs/model/students/qwen2.5_32b.yaml"
    cfg = load_config(os.path.join(ROOT, path), [])
    m = cfg.active_model
    layout = {"tp": 8, "sp": True, "cp": 4, "pp": 3, "dp": 2}
    plan = _plan(path, layout, 64, 32768)
    kv_per_rank = max(1, m.num_kv_heads // 8)
    most = -(-m.num_layers // 3)
    assert plan.kv_cache["gqa_heads"] == 64 * 32768 / (2 * 4) * most * 2 * 2 * kv_per_rank * m.head_size
