"""DeepSeek-V3.2's two indexer training stages (`model.dsa_stage`), applied to a built model: the
family's training hooks (DSATraining below; the trainer sees only the protocol, models/spec.py).

    dense_warmup  dense attention; only the indexer trains (everything else frozen, routing biases
                  kept), by its KL loss to the main attention's head-summed distribution
    sparse        top-k sparse attention; everything trains: the LM loss the main model, the KL loss
                  (on the selected tokens) the indexer, each kept out of the other's graph
The KL loss is weighted by model.index_loss_weight and normalised, like the LM loss, by the
global number of target tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from r1mega.errors import ConfigError
from r1mega.models.deepseek_v3.balance import MoETraining
from r1mega.models.deepseek_v32.config import DSA_STAGES
from r1mega.models.stage import IGNORE_INDEX
from r1mega.parallel.layout import ParallelState


def dsa_layers(chunks: torch.nn.Module) -> list:
    """The sparse-attention layers (DSAttention) of these stage chunks."""
    from r1mega.models.deepseek_v32.attention import DSAttention  # model code loads when a model exists

    return [m for m in chunks.modules() if isinstance(m, DSAttention)]


def prepare_stage(chunks: torch.nn.Module, stage: Optional[str]) -> list:
    """Set attention mode and trainable tensors for `stage` (before the optimizer is built)."""
    layers = dsa_layers(chunks)
    if stage is None:
        return layers
    if stage not in DSA_STAGES:
        raise ConfigError("model.dsa_stage", f"expected one of {', '.join(DSA_STAGES)} or null, got {stage!r}")
    if not layers:
        raise ConfigError("model.dsa_stage", f"{stage} needs a DeepSeek-V3.2 model (model_type deepseek_v32)")
    for m in layers:
        m.dense = stage == "dense_warmup"
    if stage == "dense_warmup":
        for name, p in chunks.named_parameters():
            if ".indexer." not in name:
                p.requires_grad_(False)
    return layers


def set_index_loss_scale(layers: list, weight: float, num_tokens: int) -> None:
    for m in layers:
        m.index_loss_scale = weight / max(num_tokens, 1)
        m.index_loss_sum = None


def index_loss(layers: list, ps: ParallelState, num_tokens: int) -> float:
    """This step's indexer KL per target token, summed over layers (every rank gets it)."""
    sums = [m.index_loss_sum for m in layers if m.index_loss_sum is not None]
    device = next((s.device for s in sums), torch.device("cpu"))
    total = torch.stack(sums).sum().reshape(1) if sums else torch.zeros(1, device=device)
    for group in (ps.g("dp_cp"), ps.g("pp")):  # TP ranks hold the same sums
        if group is not None:
            dist.all_reduce(total, group=group)
    return float(total) / max(num_tokens, 1)


class DSATraining(MoETraining):
    """DeepSeek-V3's step rules, plus the indexer's stage: prepared before the optimizer exists, its KL
    loss weighted per target token before each step and reported after; in the dense warm-up the main
    model (routing biases included) stays as it is."""

    def rl_refusal(self, m):
        if m.dsa_stage is not None:  # GRPO freezes nothing and trains no indexer loss
            return "model.dsa_stage", (f"{m.dsa_stage} is a pretraining/SFT stage of the indexer; GRPO runs "
                                       f"neither: leave it null")
        return None

    def prepare(self, chunks, m) -> None:
        if m.dsa_stage:
            prepare_stage(chunks, m.dsa_stage)

    def before_step(self, chunks, m, labels: torch.Tensor) -> None:
        super().before_step(chunks, m, labels)
        if m.dsa_stage:
            set_index_loss_scale(dsa_layers(chunks), m.index_loss_weight, int((labels != IGNORE_INDEX).sum()))

    def after_step(self, chunks, ps, m, skipped: bool, result) -> dict[str, float]:
        metrics = super().after_step(chunks, ps, m, skipped or m.dsa_stage == "dense_warmup", result)
        if m.dsa_stage:
            metrics["index_loss"] = index_loss(dsa_layers(chunks), ps, result.num_tokens)
        return metrics
