"""Scale probe: the routing a rollout records for replay (rl.routing_replay, DeepSeek-V3.2's keep
routing) is [positions, rows, k] per MoE layer, padded to the longest row, and was int64: for R1's
rollouts (4,096 rows of a DP rank, 64K-token responses, top-8, a 4-layer stage) 68 GB per GPU. Expert
ids of up to 256 experts fit a byte: the record is uint8 now (int32 past 256), and replay still chooses
exactly the recorded experts."""
import torch

from r1mega.inference.generate import GenerationConfig, generate
from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import single_process_state


def _rollout(experts: int):
    torch.manual_seed(0)
    ps = single_process_state()
    model = DeepseekV3(ModelConfig(num_layers=2, n_routed_experts=experts, num_experts_per_tok=8, n_group=8,
                                   topk_group=4, first_k_dense_replace=0, num_mtp_layers=0), ps)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 200, (n,), generator=g).tolist() for n in (5, 17, 9)]
    r = generate(model, ps, prompts, GenerationConfig(max_new_tokens=12, record_routing=True))
    return model, ps, r


def test_routing_record_takes_one_byte_per_expert_choice_and_replays_exactly():
    model, ps, r = _rollout(256)
    width, B = r.tokens.shape[1] - 1, r.tokens.shape[0]
    assert sorted(r.routing) == [0, 1]
    for layer, rec in r.routing.items():
        assert rec.shape == (width, B, 8)
        assert rec.untyped_storage().nbytes() == width * B * 8  # one byte per choice, not eight
    # the training forward replaying the record routes every real token to exactly those experts
    model.train()
    chosen = {}
    for i, layer in model.layers.items():
        layer.mlp.register_forward_hook(lambda mod, args, out, i=int(i): chosen.__setitem__(i, mod.last_topk_idx))
    model(r.tokens[:, :-1], attn_mask=None, position_ids=r.position_ids[:, :-1],
          routing={k: v for k, v in r.routing.items()})
    for layer, rec in r.routing.items():
        # tokens reach the MoE position-major ([s, b]), as the record is laid out
        assert torch.equal(chosen[layer].sort(-1).values, rec.reshape(-1, 8).long().sort(-1).values)


def test_routing_record_past_256_experts_is_int32():
    _, _, r = _rollout(512)
    assert all(v.dtype == torch.int32 for v in r.routing.values())
