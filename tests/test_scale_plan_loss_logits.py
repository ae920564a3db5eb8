"""Scale probe: what the last pipeline stage holds per vocab entry for backward. Each cross-entropy keeps
its float32 log-probabilities over the vocab shard ([tokens, V/tp]): the main head's and one per MTP
module (DeepSeek-V3's one, or more). The plan counted one such tensor, whatever num_mtp_layers."""
import os

import pytest
import torch

from r1mega.config import ParallelConfig, load_config
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import single_process_state
from r1mega.plan import plan_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 256


def _held_vocab_bytes(vocab: int, mtp: int) -> int:
    """Bytes of the tensors of at least tokens x vocab entries a training forward keeps for backward."""
    torch.manual_seed(0)
    model = DeepseekV3(ModelConfig(vocab_size=vocab, num_layers=1, num_mtp_layers=mtp, first_k_dense_replace=1),
                       single_process_state())
    held = []

    def pack(t):
        if t.numel() >= S * vocab:
            held.append(t.numel() * t.element_size())
        return t

    ids = torch.randint(0, vocab, (1, S))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids)
    return sum(held)


def _planned_activations(vocab: int, mtp: int) -> float:
    cfg = load_config(os.path.join(ROOT, "configs", "model", "tiny.yaml"), [])
    cfg.model = ModelConfig(vocab_size=vocab, num_layers=1, num_mtp_layers=mtp, first_k_dense_replace=1)
    cfg.parallel = ParallelConfig()
    return plan_for(cfg, 1, 1, S).memory["activations"]


@pytest.mark.parametrize("mtp", [0, 1, 2])
def test_plan_counts_a_float32_vocab_tensor_per_loss_head(mtp):
    measured = _held_vocab_bytes(8192, mtp) - _held_vocab_bytes(4096, mtp)
    planned = _planned_activations(8192, mtp) - _planned_activations(4096, mtp)
    assert measured == S * 4096 * 4 * (1 + mtp)
    assert planned == pytest.approx(measured)
