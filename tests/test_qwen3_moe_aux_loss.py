"""Qwen3-MoE's load-balancing loss (router_aux_loss_coef, with output_router_logits as transformers
reads it), on one process: with one MoE layer and one row it is transformers' `aux_loss`, and the
loss's gradients are transformers' (loss + coef x aux_loss); with several MoE layers and rows it is the
mean over layers and rows of transformers' per-layer, per-row form (see models/qwen3_moe/training.py)."""
import pytest
import torch
import torch.nn.functional as F

from qwen3_moe_hf import make_qwen3_moe, per_expert_grads
from r1mega.train.lm_step import lm_forward_backward
from student_workers import build
from tiny_hf import batch

COEF = 0.5  # large: the balance loss's share of the router gradients is far above the tolerance


def ours(path: str, ids, labels) -> tuple[float, float, dict]:
    """(loss, the aux loss the step reports, full gradients) of one training step's forward-backward."""
    family, chunks, ps, _, _ = build(path, {}, 1)
    cfg = chunks[0].cfg
    hooks = family.training
    step = lm_forward_backward(chunks, ps, ids, labels, 1, loss_weights=hooks.loss_weights(cfg))
    metrics = hooks.after_step(chunks, ps, cfg, False, step)
    return step.loss, metrics["aux_loss"], family.gather_full(chunks[0], grads=True)


@pytest.mark.parametrize("norm", [True, False])
def test_one_layer_one_row_is_transformers_loss_and_gradients(norm, tmp_path):
    path = str(tmp_path / "hf")
    hf = make_qwen3_moe("only0_norm_untied", path, num_hidden_layers=2, norm_topk_prob=norm,
                        output_router_logits=True, router_aux_loss_coef=COEF)
    ids, labels = batch(96, 1, 16, seed=5)
    loss, aux, grads = ours(path, ids, labels)
    out = hf(ids, output_router_logits=True)
    ref_loss = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert abs(aux - out.aux_loss.item()) < 1e-6 and aux > 1.0  # E x sum f P >= 1, = 1 when balanced
    (ref_loss + COEF * out.aux_loss).backward()
    assert abs(loss - ref_loss.item()) < 1e-5  # the step's reported loss is the LM loss alone
    for name, g in per_expert_grads(hf).items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    router = "model.layers.1.mlp.gate.weight"
    hf.zero_grad()
    ref_loss2 = F.cross_entropy(hf(ids).logits.flatten(0, 1), labels.flatten())
    ref_loss2.backward()
    assert (grads[router] - hf.model.layers[1].mlp.gate.weight.grad).abs().max() > 1e-3  # the aux term counts


def test_several_layers_and_rows_average_transformers_per_layer_per_row(tmp_path):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    path = str(tmp_path / "hf")
    hf = make_qwen3_moe("only0_norm_untied", path, output_router_logits=True, router_aux_loss_coef=COEF)
    B, S, E, K = 3, 10, 8, 2
    ids, labels = batch(96, B, S, seed=6)
    _, aux, _ = ours(path, ids, labels)
    with torch.no_grad():
        out = hf(ids, output_router_logits=True)
    per = [float(load_balancing_loss_func((layer.view(B, S, E)[b],), E, K))
           for layer in out.router_logits for b in range(B)]
    assert len(per) == 3 * B
    assert abs(aux - sum(per) / len(per)) < 1e-6
    assert abs(aux - out.aux_loss.item()) > 1e-3  # transformers' whole-batch, all-layer form differs
