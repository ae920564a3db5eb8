"""r1mega's DeepSeek model equals transformers' on the same weights: logits, loss and gradients."""
import pytest
import torch
import torch.nn.functional as F

from r1mega.config import Config, ModelConfig, validate
from r1mega.models.deepseek_v3.hf_weights import CheckpointError, gather_full, load_hf_weights
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import single_process_state
from r1mega.train.lm_step import lm_forward_backward
from tiny_hf import batch
from tiny_variants import VARIANTS, hf_grads, make_variant


def load_single(hf_dir):
    cfg = validate(Config(model=ModelConfig.from_hf(hf_dir)), 1)
    model = DeepseekV3(cfg.model, single_process_state())
    report = load_hf_weights(model, hf_dir)
    return model, report


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers(variant, tmp_path):
    hf = make_variant(variant)
    hf.save_pretrained(tmp_path)
    model, report = load_single(str(tmp_path))
    # transformers' checkpoints carry no MTP layer: only the MTP modules may keep their init
    assert all(n.startswith("mtp") for n in report.kept_init)

    ids, labels = batch(hf.config.vocab_size, 3, 20)
    ref_logits = hf(ids).logits
    ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    ref_loss.backward()

    ps = single_process_state()
    out = lm_forward_backward(model, ps, ids, labels, forward_only=True)
    logits = out.logits[0].transpose(0, 1)
    torch.testing.assert_close(logits, ref_logits.detach(), atol=1e-4, rtol=1e-4)
    step = lm_forward_backward(model, ps, ids, labels)
    assert abs(step.loss - ref_loss.item()) < 1e-5

    grads, ref = gather_full(model, grads=True), hf_grads(hf)
    compared = 0
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        compared += 1
    assert compared == len(ref) > 20


def test_routing_actually_uses_the_selection_bias(tmp_path):
    """Changing e_score_correction_bias must change routing (selection) but not the weighting
    formula: a model with a different bias must disagree with the reference."""
    hf = make_variant("v3_grouped")
    hf.save_pretrained(tmp_path)
    model, _ = load_single(str(tmp_path))
    ids, labels = batch(hf.config.vocab_size, 2, 16)
    ps = single_process_state()
    before = lm_forward_backward(model, ps, ids, labels, forward_only=True).logits[0]
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.add_(torch.linspace(-1, 1, m.e_score_correction_bias.numel()))
    after = lm_forward_backward(model, ps, ids, labels, forward_only=True).logits[0]
    assert (before - after).abs().max() > 1e-3


def test_misshaped_checkpoint_tensor_is_named(tmp_path):
    hf = make_variant("v3_grouped")
    hf.save_pretrained(tmp_path)
    cfg = ModelConfig.from_hf(str(tmp_path))
    cfg.kv_lora_rank = 12  # the checkpoint has 8
    model = DeepseekV3(validate(Config(model=cfg), 1).model, single_process_state())
    with pytest.raises(CheckpointError, match=r"kv_a_proj_with_mqa.weight.*\(12, 32\)|\(12, 32\).*kv_a_proj"):
        load_hf_weights(model, str(tmp_path))
