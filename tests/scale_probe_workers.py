"""Rank workers of the tests/test_scale_*.py files (module-level so spawned ranks can load them)."""
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


def checkpoint_state_gather(rank: int, world: int, window: int):
    """full_states (what a checkpoint save reads) with optimizer.GATHER_WINDOW = window: the largest
    tensor any of its collectives produced, whether this rank got states, and whether they equal the
    whole bucket gathered at once."""
    from r1mega.train import optimizer as zero

    ps = build_parallel_state(ParallelConfig(dp=world))
    opt = DistributedAdamW(small_moe(ps), ps, OptimConfig())
    for b in opt.buckets:  # distinct values per element and rank, so any misplaced piece shows
        for i, k in enumerate(("master", "exp_avg", "exp_avg_sq")):
            getattr(b, k).copy_(torch.randn(b.shard) + 10 * i + 100 * rank)
    gathered = []
    plain = zero.all_gather_nograd

    def recording(x, group):
        out = plain(x, group)
        gathered.append(out.numel())
        return out

    zero.GATHER_WINDOW, zero.all_gather_nograd = window, recording
    try:
        states = opt.full_states()
    finally:
        zero.all_gather_nograd = plain
    equal = True
    for b in opt.buckets:
        whole = {k: b.gather_full(getattr(b, k)) for k in ("master", "exp_avg", "exp_avg_sq")}
        if b.rank == 0:
            equal &= all(torch.equal(states[n][k], whole[k][i]) for i, n in enumerate(b.names) for k in whole)
    return {"largest_gather": max(gathered), "bucket_numel": max(b.numel for b in opt.buckets),
            "names": len(states), "equal": equal, "writer": [b.rank == 0 for b in opt.buckets]}


def rollout_cache_peak(rank: int, world: int, cp: int, prompts: list[list[int]], new_tokens: int):
    """Peak bytes of this rank's paged rollout cache: a tiny float32 DeepSeek-V3 (2 layers) under CP `cp`
    generating `new_tokens` after each prompt (no EOS: every row runs to the end)."""
    from r1mega.inference.generate import GenerationConfig, generate

    ps = build_parallel_state(ParallelConfig(cp=cp, dp=world // cp))
    torch.manual_seed(0)
    model = DeepseekV3(ModelConfig(num_layers=2, max_position_embeddings=4096), ps)
    return generate(model, ps, prompts, GenerationConfig(max_new_tokens=new_tokens, block_size=16)).cache_bytes


def optimizer_step_traffic(rank: int, world: int):
    """Bytes this rank's ZeRO-1 step hands to its collectives (reduce-scatter inputs, all-gather outputs),
    DP `world`, after a backward of a tiny MoE."""
    from r1mega.train import optimizer as zero

    ps = build_parallel_state(ParallelConfig(dp=world))
    torch.manual_seed(0)
    chunks = small_moe(ps)
    opt = DistributedAdamW(chunks, ps, OptimConfig())
    ids = torch.randint(0, 200, (2, 16))
    out = chunks[0](ids, labels=ids)
    out.token_loss.sum().backward()
    sizes = []
    plain_rs, plain_ag = zero.reduce_scatter_nograd, zero.all_gather_nograd

    def rs(x, group):
        sizes.append(x.numel() * x.element_size())
        return plain_rs(x, group)

    def ag(x, group):
        out = plain_ag(x, group)
        sizes.append(out.numel() * out.element_size())
        return out

    zero.reduce_scatter_nograd, zero.all_gather_nograd = rs, ag
    try:
        opt.step(1e-3)
    finally:
        zero.reduce_scatter_nograd, zero.all_gather_nograd = plain_rs, plain_ag
    return sum(sizes)
