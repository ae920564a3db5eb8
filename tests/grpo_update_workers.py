"""Spawned-rank code for the GRPO update tests: one real rollout (long-tailed lengths, recorded
routing), then old/reference log-probs and the loss's gradients through the padded and the packed
rows, under one layout."""
from __future__ import annotations

import torch

from r1mega.config import Config, ModelConfig, ParallelConfig, validate
from r1mega.models.deepseek_v3.balance import moe_layers, start_counting
from r1mega.inference.generate import GenerationConfig, generate
from r1mega.models.family import family_of
from r1mega.parallel.layout import build_parallel_state, single_process_state
from r1mega.parallel.param_spec import spec_of
from r1mega.rl.update import global_values, old_and_reference_logprobs, policy_gradients, token_extras
from r1mega.rl.update import group_advantages, loss_count
from r1mega.rl.reference import ReferencePolicy
from r1mega.rl.train_batch import update_batches
from r1mega.train.setup import build_chunks, init_weights

# prompts of different lengths; each is sampled twice (groups of 2)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42, 43],
           [20, 21, 22], [50, 51, 52, 53, 54, 55, 56], [60], [70, 71, 72, 73, 74]]
GROUP = 2


def model(par: dict, world: int, seed: int):
    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=4, num_mtp_layers=0),
                          parallel=ParallelConfig(**par)), world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=seed)
    return cfg, chunks, ps


def long_tail_rollout(chunks, ps, max_new_tokens: int, top_p: float = 1.0, top_k: int = 0):
    """Samples stop at a token divisible by 9 (geometric lengths, a long tail up to the limit)."""
    prompts = [p for p in PROMPTS for _ in range(GROUP)]
    gen = GenerationConfig(max_new_tokens, 1.0, top_p, top_k, None, lambda ids: ids[-1] % 9 == 0, seed=3,
                           record_routing=True)
    return generate(chunks, ps, prompts, gen)


def by_token(batch, values: torch.Tensor) -> dict[tuple[int, int], float]:
    """{(sequence, position): value} over the batch's sampled tokens."""
    keys = zip(batch.seq[batch.generated].tolist(), batch.position_ids[batch.generated].tolist())
    return dict(zip(keys, values[batch.generated].tolist()))


def data_parallel_sums(chunks, ps) -> None:
    """What the optimizer adds to the gradients: sums over data- and context-parallel ranks."""
    for p in chunks.parameters():
        group = ps.g("edp") if spec_of(p).is_expert else ps.g("dp_cp")
        if p.grad is not None and group is not None:
            torch.distributed.all_reduce(p.grad, group=group)


def expert_loads(chunks, ps) -> torch.Tensor:
    """The step's expert loads [MoE layers, experts] as the routing-bias update reads them (summed over
    the ranks that split the tokens)."""
    loads = torch.stack([m.expert_load.clone() for _, m in moe_layers(chunks)])
    for group in (ps.g("tp"), ps.g("dp_cp")):
        if group is not None:
            torch.distributed.all_reduce(loads, group=group)
    return loads


def update_parity_worker(rank: int, world: int, par: dict, rl_options: dict, micro: int) -> dict:
    torch.manual_seed(0)
    cfg, chunks, ps = model(par, world, seed=5)
    _, ref_chunks, _ = model(par, world, seed=6)
    reference = ReferencePolicy(ref_chunks, ps, 0)
    cfg.data.micro_batch_size = micro
    cfg.rl.minibatches, cfg.rl.group_size, cfg.rl.temperature = 1, GROUP, 1.0
    for k, v in rl_options.items():
        setattr(cfg.rl, k, v)
    rollout = long_tail_rollout(chunks, ps, 24, cfg.rl.top_p, cfg.rl.top_k)
    rewards = torch.tensor([float((i * 7) % 3) for i in range(rollout.tokens.shape[0])], dtype=torch.float64)
    adv = group_advantages(rewards, GROUP)
    keep = torch.ones(rollout.tokens.shape[0], dtype=torch.bool)
    keep[3] = False  # one sequence outside the loss (DAPO's overlong filter, say)
    out = {"lengths": rollout.completion_mask.sum(1)}
    for packed in (False, True):
        cfg.rl.packed_update = packed
        (batch,), (m,) = update_batches(cfg, ps, rollout, keep)
        old, ref = old_and_reference_logprobs(cfg, ps, chunks, reference, batch, None, m, 128)
        name = "packed" if packed else "padded"
        out[f"{name}_slots"] = batch.slots
        out[f"{name}_real"] = int(((batch.seq >= 0) & keep[batch.seq.clamp(min=0)]).sum())  # kept sequences' tokens
        if old is not None:
            out[f"{name}_old"] = by_token(batch, old)
            out[f"{name}_ref"] = by_token(batch, ref)
            # a policy that moved since sampling: a fixed per-token shift of the old log-probs, the
            # same for a token wherever it sits, so ratios leave 1 and the clip acts
            shift = 0.3 * torch.sin(3.0 * batch.seq.double() + 1.7 * batch.position_ids.double()).float()
            old = old + torch.where(batch.seq >= 0, shift, torch.zeros_like(shift))
        extra = token_extras(batch, adv, old, ref)
        count = max(global_values({"n": loss_count(cfg.rl, batch, 24)}, ps, torch.device("cpu"))["n"], 1.0)
        start_counting(chunks)  # (the old log-probs' forward ran in training mode too)
        sums = policy_gradients(cfg, ps, chunks, batch, extra, count, m, family_of(chunks[0]).training)
        out[f"{name}_loads"] = expert_loads(chunks, ps)
        data_parallel_sums(chunks, ps)  # context-parallel ranks hold partial gradients until then
        out[f"{name}_sums"] = {k: float(v) for k, v in sums.items()}
        out[f"{name}_grads"] = {n: p.grad.clone() for n, p in chunks.named_parameters() if p.grad is not None}
        for p in chunks.parameters():
            p.grad = None
    return out


def vocab_parallel_scores_worker(rank: int, world: int) -> dict:
    """Log-probs and entropy from TP2 vocab shards, over the whole vocabulary and over a support,
    with their gradients (each rank: its shard's)."""
    from r1mega.rl.policy_scores import sampler_support, scores, support_with_targets

    cfg, _, ps = model(dict(tp=2), world, seed=1)
    g = torch.Generator().manual_seed(0)
    full = torch.randn(6, 32, generator=g) * 2
    target = torch.tensor([0, 5, 17, 31, 16, 3])
    shard = full[:, rank * 16:(rank + 1) * 16].clone().requires_grad_(True)
    out = {}
    for name, keep in (("all", None), ("support", sampler_support(shard.detach(), ps, 0.8, 6))):
        if keep is not None:
            keep = support_with_targets(keep, target, ps)
            out["keep"] = keep
        logp, ent = scores(shard, target, ps, keep, entropy=True)
        (logp.sum() + 0.5 * ent.sum()).backward()
        out[name] = (logp.detach(), ent.detach(), shard.grad.clone())
        shard.grad = None
    return out


def dynamic_sampling_worker(rank: int, world: int) -> dict:
    """DP2: rank 0's first draw already has every group informative, rank 1's has none; both must
    draw the pool together (its informative groups, drawn by both ranks, all go to rank 1's slots)."""
    from r1mega.rl.rollout import draw_until_informative

    _, _, ps = model({}, world, seed=1)
    calls = []

    def draw(n, offset, size, mine):
        calls.append((n, offset, size, list(mine)))
        pool = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # groups 0, 1 and 3 informative
        return fake_scored(sum((pool[2 * e:2 * e + 2] for e in mine), []), offset=10 + 2 * mine.start)

    first = fake_scored([1.0, 0.0, 0.0, 1.0] if rank == 0 else [1.0, 1.0, 0.0, 0.0], offset=0)
    scored, counts = draw_until_informative(first, [2 * rank, 2 * rank + 1], draw, 2, 3, ps, torch.device("cpu"))
    return {"calls": calls, "counts": counts, "rewards": scored.rewards, "tokens": scored.rollout.tokens}


def fake_scored(rewards: list[float], offset: int, prompt_len: int = 3, new: int = 2):
    """A ScoredRollout of len(rewards) sequences whose tokens name the sequence (offset + row)."""
    from r1mega.inference.generate import Rollout
    from r1mega.rl.rollout import ScoredRollout

    B = len(rewards)
    tokens = torch.tensor([[offset + b] * (prompt_len + new) for b in range(B)])
    mask = torch.zeros(B, prompt_len + new, dtype=torch.bool)
    mask[:, prompt_len:] = True
    routing = {0: torch.full((prompt_len + new, B, 2), offset)}
    rollout = Rollout(tokens, prompt_len, torch.zeros(B, dtype=torch.long), mask, mask.float() * -1.0, routing)
    return ScoredRollout(rollout, [{"id": offset + b} for b in range(B)], [None] * B, [f"r{offset + b}" for b in range(B)],
                         [{"accuracy": r} for r in rewards], torch.tensor(rewards, dtype=torch.float64),
                         torch.zeros(B, dtype=torch.bool), new)
