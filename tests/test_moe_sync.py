"""The MoE layer's training forward/backward never waits on the device (no .item(), .tolist(),
nonzero or boolean-mask indexing) on one process, and its balance statistics stay on the device
until `update_routing_bias` reads them once: they must equal the sequence-wise balance loss and
expert loads computed by hand from the router's choices."""
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from r1mega.config import Config, ModelConfig, validate
from r1mega.models.deepseek_v3.moe import MoE
from r1mega.parallel.layout import single_process_state
from r1mega.models.deepseek_v3.balance import set_balance_loss_scale, update_routing_bias

# ops whose result size or value the host must wait for
SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
           "aten.index.Tensor_bool", "aten.repeat_interleave.Tensor", "aten.unique.default",
           "aten.bincount.default"}


class _SyncWatch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        bool_index = name == "aten.index.Tensor" and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        if name in SYNCING or bool_index:
            self.seen.append(name)
        return func(*args, **kwargs)


def _moe():
    cfg = validate(Config(model=ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                                            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                                            moe_intermediate_size=16, kv_lora_rank=8, q_lora_rank=16)), 1)
    torch.manual_seed(0)
    moe = MoE(cfg.model, single_process_state()).train()
    with torch.no_grad():
        moe.gate.e_score_correction_bias.copy_(0.1 * torch.randn(8))
    return cfg.model, moe


def test_moe_training_step_has_no_host_sync_and_exact_statistics():
    cfg, moe = _moe()
    s, b, alpha = 6, 3, 0.3
    x = torch.randn(s, b, cfg.hidden_size, requires_grad=True)
    set_balance_loss_scale(torch.nn.ModuleList([moe]), alpha, global_sequences=b)
    watch = _SyncWatch()
    with watch:
        out = moe(x)
        out.square().sum().backward()
    assert watch.seen == [], f"host syncs in the MoE step: {sorted(set(watch.seen))}"
    assert isinstance(moe.aux_loss_sum, torch.Tensor) and moe.expert_load.dtype == torch.long

    # by hand: route again (deterministic), then DeepSeek-V3's sequence-wise loss per sequence
    tokens = x.detach().reshape(-1, cfg.hidden_size)  # token t = (position t // b, sequence t % b)
    idx, _, scores = moe.gate(tokens)
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    expected = 0.0
    for seq in range(b):
        rows = torch.arange(seq, s * b, b)
        f = F.one_hot(idx[rows].reshape(-1), E).sum(0).float() * E / (K * s)
        p = (scores[rows] / scores[rows].sum(-1, keepdim=True)).mean(0)
        expected += float((f * p).sum())
    loads = torch.bincount(idx.reshape(-1), minlength=E)
    assert torch.equal(moe.expert_load, loads)
    bias_before = moe.gate.e_score_correction_bias.clone()

    stats = update_routing_bias(torch.nn.ModuleList([moe]), single_process_state(), rate=0.01)
    assert abs(stats["balance_loss"] - alpha / b * expected) < 1e-6
    mean = loads.double().mean()
    assert abs(stats["max_load_ratio"] - float(loads.max() / mean)) < 1e-9
    assert abs(stats["min_load_ratio"] - float(loads.min() / mean)) < 1e-9
    step = moe.gate.e_score_correction_bias - bias_before
    torch.testing.assert_close(step, 0.01 * torch.sign(mean - loads.double()).float())
    assert moe.expert_load.sum() == 0  # reset for the next step
