"""Rank workers of the tests/test_probe_scale_*.py files (module-level so spawned ranks can load them)."""
import torch

from r1mega.config import OptimConfig
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.config import ParallelConfig
from r1mega.parallel.layout import build_parallel_state
from r1mega.train.optimizer import DistributedAdamW


def small_moe(ps):
    return torch.nn.ModuleList([DeepseekV3(ModelConfig(hidden_size=128, n_routed_experts=8, num_layers=2), ps)])


def optimizer_storage(rank: int, world: int):
    """Per bucket: its element count, this rank's shard, and the bytes of storage behind every tensor
    the ZeRO-1 optimizer keeps between steps (master, moments, weight-decay and grad-norm masks)."""
    ps = build_parallel_state(ParallelConfig(dp=world))
    opt = DistributedAdamW(small_moe(ps), ps, OptimConfig())
    out = []
    for i, b in enumerate(opt.buckets):
        held = {"master": b.master, "exp_avg": b.exp_avg, "exp_avg_sq": b.exp_avg_sq,
                "wd_mask": opt.wd_masks[i], "norm_mask": opt.norm_masks[i]}
        out.append({"numel": b.numel, "shard": b.shard,
                    "bytes": {k: t.untyped_storage().nbytes() for k, t in held.items()}})
    return out
