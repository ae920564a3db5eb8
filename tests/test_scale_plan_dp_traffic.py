"""Scale probe: `r1mega plan`'s DP traffic against what the ZeRO-1 step sends. The optimizer reduce-scatters
gradients and all-gathers parameters in float32 (its buckets are its fp32 master space), but the plan
counted them at the weights' 2 bytes, half of what every step sends over DP."""
import os

import pytest

from r1mega.config import ParallelConfig, load_config
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.plan import plan_for
from tests.spawn_cases import run_ranks
from tests.scale_probe_workers import optimizer_step_traffic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_dp_traffic_equals_the_optimizer_step_s():
    sent = run_ranks(optimizer_step_traffic, 2)  # bytes handed to collectives, per rank
    cfg = load_config(os.path.join(ROOT, "configs", "model", "tiny.yaml"), [])
    cfg.model = ModelConfig(hidden_size=128, n_routed_experts=8, num_layers=2)  # the worker's model
    cfg.parallel = ParallelConfig(dp=2)
    plan = plan_for(cfg, 2, 1, 16)
    # a ring sends (n - 1) / n of each collective's buffer: half at DP 2
    assert plan.comm["dp"] == pytest.approx(sent[0] / 2, rel=1e-3)
