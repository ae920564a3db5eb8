"""DeepSeekMoE training rules around the optimizer step (the family's training hooks, spec.py).

Aux-loss-free balancing (DeepSeek-V3 sec. 2.1.2): after each step, every routed expert's
selection bias moves by `rate` against the sign of its load error, b_i += rate * sign(mean - load_i),
with loads counted over the whole global batch (summed over the TP and DP ranks of a stage).
The small sequence-wise balance loss is computed inside MoE layers; here it is only scaled.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from r1mega.models.spec import TrainingHooks
from r1mega.parallel.layout import ParallelState


def moe_layers(chunks) -> list:
    """The routed-expert layers (DeepSeekMoE's `MoE`) of these stage chunks."""
    from r1mega.models.deepseek_v3.moe import MoE  # model code loads when a model exists

    return [(name, m) for name, m in chunks.named_modules() if isinstance(m, MoE)]


def start_counting(chunks) -> None:
    """Zero the expert loads before a step's forward: a step's bias update counts that step's tokens
    only, not those of forwards run in training mode outside a step (GRPO's old log-probs)."""
    for _, m in moe_layers(chunks):
        m.expert_load.zero_()


def set_balance_loss_scale(chunks, alpha: float, global_sequences: int) -> None:
    for _, m in moe_layers(chunks):
        m.aux_loss_scale = alpha / max(global_sequences, 1)
        m.aux_loss_sum = None


@torch.no_grad()
def update_routing_bias(chunks, ps: ParallelState, rate: float) -> dict[str, float]:
    """Apply the bias update from this step's loads; reset them. Collective over the pipeline stages.
    Returns load statistics of the whole model and global batch (every stage's layers, every DP
    rank's sequences), as one process computes them. All layers' loads travel in one all-reduce
    per group and are read on the host once."""
    layers = [m for _, m in moe_layers(chunks)]
    device = next(chunks.parameters()).device
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=device)
    top = torch.stack([inf.new_zeros(()), -inf, inf.new_zeros(())])  # max ratio, -min ratio, any MoE layer
    aux = inf.new_zeros(())  # this rank's sequences' balance loss (replicated over TP and CP)
    if layers:
        loads = torch.stack([m.expert_load for m in layers])  # [layers, experts], int64 counts
        for group in (ps.g("tp"), ps.g("dp_cp")):  # every rank counted its own tokens
            if group is not None:
                dist.all_reduce(loads, group=group)
        loads = loads.double()
        mean = loads.mean(dim=1, keepdim=True)
        for m, load, avg in zip(layers, loads, mean):
            if m.gate.e_score_correction_bias is not None and rate > 0:
                bias = m.gate.e_score_correction_bias
                bias.add_((rate * torch.sign(avg - load)).to(bias.dtype))
            m.expert_load.zero_()
        used = mean[:, 0] > 0
        ratio = loads / mean.clamp(min=torch.finfo(loads.dtype).tiny)
        top = torch.stack([torch.where(used, ratio.max(dim=1).values, 0.0).max(),
                           -torch.where(used, ratio.min(dim=1).values, inf).min(), inf.new_ones(())])
        aux = sum((m.aux_loss_sum.to(aux) for m in layers if m.aux_loss_sum is not None), aux)
    if ps.g("dp") is not None:
        dist.all_reduce(aux, group=ps.g("dp"))
    if ps.pp > 1:  # the other stages' layers
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=ps.g("pp"))
        dist.all_reduce(aux, group=ps.g("pp"))
    stats = torch.cat([top, aux[None]]).tolist()
    if not stats[2]:
        return {"max_load_ratio": 0.0, "min_load_ratio": 0.0, "balance_loss": 0.0}
    return {"max_load_ratio": stats[0], "min_load_ratio": -stats[1], "balance_loss": stats[3]}


class MoETraining(TrainingHooks):
    """DeepSeek-V3's rules around a step: the MTP loss (weight model.mtp_weight), the sequence-wise
    balance loss (model.balance_alpha) and the aux-loss-free routing-bias update (model.bias_update_rate)."""

    extra_losses = ("mtp_loss",)

    def loss_weights(self, m) -> dict[str, float]:
        return {"mtp_weight": m.mtp_weight, "balance_alpha": m.balance_alpha}

    def rollout_weights(self, weight: float) -> dict[str, float]:
        return {"mtp_weight": weight}

    def label_context(self, m) -> int:
        return m.num_mtp_layers  # the MTP module at depth k predicts k tokens further on

    def before_step(self, chunks, m, labels) -> None:
        start_counting(chunks)

    def start_forward(self, chunks, weights: dict, global_sequences: int, training: bool) -> None:
        set_balance_loss_scale(chunks, weights.get("balance_alpha", 0.0) if training else 0.0, global_sequences)

    def extra_loss(self, out, denom: int, weights: dict):
        """The MTP loss: each depth's token losses per target token, averaged over the depths."""
        if not out.mtp_token_loss:
            return None, {"mtp_loss": out.token_loss.new_zeros(())}
        mtp = sum(t.sum() for t in out.mtp_token_loss) / (denom * len(out.mtp_token_loss))
        return weights.get("mtp_weight", 0.0) * mtp, {"mtp_loss": mtp}

    def after_step(self, chunks, ps, m, skipped: bool, result) -> dict[str, float]:
        balance = update_routing_bias(chunks, ps, 0.0 if skipped else m.bias_update_rate)
        if not moe_layers(chunks) and m.num_mtp_layers == 0:
            return {}  # no MTP or expert statistics to report
        # GRPO reports the MTP loss with its own numbers, only when rl.mtp_weight trains it
        mtp = {"mtp_loss": result.extra["mtp_loss"]} if "mtp_loss" in result.extra else {}
        return {**mtp, "expert_max_load": balance["max_load_ratio"], "expert_min_load": balance["min_load_ratio"],
                "balance_loss": balance["balance_loss"]}
