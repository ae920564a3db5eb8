"""DeepSeekMoE training rules around the optimizer step.

Aux-loss-free balancing (DeepSeek-V3 sec. 2.1.2): after each step, every routed expert's
selection bias moves by `rate` against the sign of its load error, b_i += rate * sign(mean - load_i),
with loads counted over the whole global batch (summed over the TP and DP ranks of a stage).
The small sequence-wise balance loss is computed inside MoE layers; here it is only scaled.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from r1mega.parallel.layout import ParallelState


def moe_layers(chunks) -> list:
    """The routed-expert layers (DeepSeekMoE's `MoE`, found by its load counter, so dense families
    simply have none)."""
    return [(name, m) for name, m in chunks.named_modules() if hasattr(m, "expert_load")]


def set_balance_loss_scale(chunks, alpha: float, global_sequences: int) -> None:
    for _, m in moe_layers(chunks):
        m.aux_loss_scale = alpha / max(global_sequences, 1)
        m.aux_loss_sum = 0.0


@torch.no_grad()
def update_routing_bias(chunks, ps: ParallelState, rate: float) -> dict[str, float]:
    """Apply the bias update from this step's loads; reset them. Returns load statistics."""
    stats = {"max_load_ratio": 0.0, "min_load_ratio": float("inf"), "balance_loss": 0.0}
    layers = moe_layers(chunks)
    for _, m in layers:
        load = m.expert_load
        for group in (ps.g("tp"), ps.g("dp")):
            if group is not None:
                dist.all_reduce(load, group=group)
        mean = load.mean()
        if m.gate.e_score_correction_bias is not None and rate > 0:
            m.gate.e_score_correction_bias.add_(rate * torch.sign(mean - load))
        if mean > 0:
            stats["max_load_ratio"] = max(stats["max_load_ratio"], float(load.max() / mean))
            stats["min_load_ratio"] = min(stats["min_load_ratio"], float(load.min() / mean))
        stats["balance_loss"] += m.aux_loss_sum
        load.zero_()
    if not layers:
        stats["min_load_ratio"] = 0.0
    return stats
