"""Scale probe: what full recompute holds per microbatch in flight. Under train.recompute=full a
microbatch keeps only its layers' inputs between its forward and its backward; one layer's activations
exist again only while that layer's backward re-runs it, for one microbatch at a time. The plan added
that layer's whole activations to every microbatch in flight (x 15 on the first stages of the README's
pp 16 layout: 12.6 GiB of activations planned where the layers' inputs take under 1 GiB). Checked by
measuring what a stage's forward saves for backward."""
import os

import pytest
import torch

from r1mega.config import ParallelConfig, load_config
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import single_process_state
from r1mega.parallel.recompute import set_recompute
from r1mega.plan import plan_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 512
MODEL = dict(num_layers=4, first_k_dense_replace=1, vocab_size=64)
PP_LAYERS = [3, 1]  # stage 0 (three layers) holds the most: the plan reports it


def _saved_bytes_per_microbatch() -> int:
    """Bytes a float32 forward of stage 0 (of 2) keeps for backward under full recompute (parameters aside)."""
    torch.manual_seed(0)
    stage = DeepseekV3(ModelConfig(**MODEL), single_process_state(), pp_layers=PP_LAYERS, stage=0, num_stages=2)
    set_recompute(torch.nn.ModuleList([stage]), "full", None)
    params = {p.untyped_storage().data_ptr() for p in stage.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(torch.randint(0, 64, (1, S)))
    return sum(saved.values())


def _planned_activations(global_batch: int) -> tuple[int, float]:
    cfg = load_config(os.path.join(ROOT, "configs", "model", "tiny.yaml"), ["train.recompute=full"])
    cfg.model = ModelConfig(**MODEL)
    cfg.parallel = ParallelConfig(pp=2, pp_layers=PP_LAYERS)
    plan = plan_for(cfg, 2, 1, S, global_batch, weight_bytes=4)
    return plan.stage, plan.memory["activations"]


def test_each_microbatch_in_flight_holds_its_layer_inputs_only():
    (stage_a, one), (stage_b, two) = _planned_activations(1), _planned_activations(2)  # 1, then 2 in flight
    assert stage_a == stage_b == 0
    assert two - one == pytest.approx(_saved_bytes_per_microbatch(), rel=0.1)
