"""Qwen3-MoE's training hooks: the router's load-balancing loss and the expert-load metrics.

transformers (Qwen3MoeForCausalLM with output_router_logits) adds router_aux_loss_coef x
    E x sum_e f_e P_e,   f_e: the share of top-k choices that went to expert e, P_e: its mean router
    probability, both over every token of the forward's batch and every MoE layer's logits concatenated.
Exact across pipeline stages that would need every stage's f before any stage's backward, and across
microbatches and DP ranks it changes with how the batch is split. r1mega computes the same term per
MoE layer and per sequence (row), and averages over both (Megatron's `seq_aux_loss`; DeepSeek-V3's
sequence-wise balance loss x top-k, which DeepSeek's MoE layers already compute under TP/SP/CP/EP/PP):
    coef x mean over MoE layers l and rows b of  E x sum_e f_e(l, b) P_e(l, b)
so it is the same for every layout, microbatching and DP split. With one MoE layer and one row it is
transformers' value exactly; otherwise the two differ by the cross terms between layers and rows
(tests/test_qwen3_moe_aux_loss.py checks both). Pad slots (negative document ids) are left out, as
transformers leaves out what its attention_mask marks (`stage.load_counted`). Nothing is added to GRPO's
loss (as DeepSeek's family).
"""
from __future__ import annotations

from r1mega.models.deepseek_v3.balance import moe_layers, set_balance_loss_scale, start_counting, update_routing_bias
from r1mega.models.spec import TrainingHooks


def aux_weight(m) -> float:
    """The balance loss's coefficient as transformers applies it (only with output_router_logits)."""
    return m.router_aux_loss_coef if m.output_router_logits else 0.0


class Qwen3MoeTraining(TrainingHooks):
    def loss_weights(self, m) -> dict[str, float]:
        # DeepSeek's layers add sum over rows of (their sequence-wise loss) x the scale; x top-k gives
        # transformers' form of each row, / the MoE layers their mean
        layers = max(m.moe_layers(), 1)
        return {"balance_alpha": aux_weight(m) * m.num_experts_per_tok / layers}

    def before_step(self, chunks, m, labels) -> None:
        start_counting(chunks)

    def start_forward(self, chunks, weights: dict, global_sequences: int, training: bool) -> None:
        set_balance_loss_scale(chunks, weights.get("balance_alpha", 0.0) if training else 0.0, global_sequences)

    def after_step(self, chunks, ps, m, skipped: bool, result) -> dict[str, float]:
        stats = update_routing_bias(chunks, ps, 0.0)  # softmax routing has no selection bias to move
        if not moe_layers(chunks) and m.moe_layers() == 0:
            return {}
        coef = aux_weight(m)
        return {"expert_max_load": stats["max_load_ratio"], "expert_min_load": stats["min_load_ratio"],
                "aux_loss": stats["balance_loss"] / coef if coef > 0 else 0.0}
