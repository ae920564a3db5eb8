"""GRPO's rollout phase: this DP rank's questions of a rollout, G samples of each generated in
inference mode on the training shards, and the rewards of each output (`sample_rollout`); the
lengths a run's responses reach checked against the model's positions and the rollout cache at
start-up; the engine's work counts.

DAPO's dynamic sampling (rl.dynamic_sampling, `draw_until_informative`): a group whose rewards are
all equal has zero advantage and teaches nothing, so more prompts are drawn until every group slot of
the rollout (prompts_per_step x minibatches, split over DP ranks) holds an informative group.

Pooled: after the rollout, the empty slots (uninformative groups) are counted over all ranks and a
pool of replacement prompts is drawn at once, sized from the informative fraction observed so far
so that one round usually fills them all (`pool_size`); its groups are split over the DP ranks in
near-equal contiguous shares. The i-th informative group of the pools (in pool order) fills the
i-th empty slot (in slot order): both orders are global positions, so the groups trained, and
their order, do not depend on the layout. A group whose slot belongs to another DP rank moves
there (point to point, between the ranks of the same TP/PP/CP coordinates). Rounds repeat while
slots are empty, at most `max_draws` rounds and `max_draws` rollouts' worth of extra prompts; a
slot still empty keeps its own (uninformative) group, so the step keeps its shape. Every rank
takes the same decisions from the same all-reduced flags (one all-reduce per round, over DP: the
other ranks of a model replica see the same rewards), so every rank generates as often
(expert parallelism needs every rank in each forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.distributed as dist

from r1mega.config import RLConfig
from r1mega.data.prompts import PromptSource, Rendered
from r1mega.errors import ConfigError
from r1mega.inference.generate import GenerationConfig, Rollout, generate
from r1mega.kernels import batch_invariant
from r1mega.parallel.layout import ParallelState
from r1mega.rl.rewards import equal_reward_groups
from r1mega.rl.rewards import judge_batch, overlong_shaping
from r1mega.rl.train_batch import merge_rollouts, work_of
from r1mega.train.setup import Run


# ---- the rollout of one step's questions -------------------------------------------------------

@dataclass
class ScoredRollout:
    rollout: Rollout
    problems: list[dict]  # one per output (each question repeated G times, groups contiguous)
    rendered: list[Rendered]
    responses: list[str]  # what the rewards judged: the template's response prefix + the completion
    terms: list[dict[str, float]]  # each reward function's value per output
    rewards: torch.Tensor  # [B] total, after overlong shaping
    truncated: torch.Tensor  # [B] bool: cut at max_new_tokens
    max_new_tokens: int


def check_responses_fit(rl, longest_prompt: int, positions: int, steps: int) -> None:
    """The longest prompt plus every response length the run's steps will allow (rl.max_new_tokens,
    and rl.max_new_tokens_schedule entries reached before `steps`) must fit the model's positions;
    the key that does not is named."""
    for key, n in response_limits(rl, steps):
        if longest_prompt + n > positions:
            raise ConfigError(key, f"{n} new tokens after the longest prompt ({longest_prompt} tokens) exceed the "
                                   f"model's {positions} positions (max_position_embeddings); at most "
                                   f"{positions - longest_prompt}")


def check_cache_budget(rl, longest_prompt: int, steps: int) -> None:
    """rl.rollout_cache_tokens must hold one row of the longest prompt at every response length the run
    reaches (the engine refuses it at the rollout otherwise, after the model is built): named at start."""
    from r1mega.inference.continuous import row_need_tokens

    if not rl.rollout_cache_tokens:
        return
    positions = 1 + (rl.draft_tokens if rl.speculative else 0)  # a speculative step writes its drafts too
    block = GenerationConfig().block_size
    for key, n in response_limits(rl, steps):
        need = row_need_tokens(longest_prompt, n, block, positions)
        if rl.rollout_cache_tokens < need:
            raise ConfigError("rl.rollout_cache_tokens",
                              f"{rl.rollout_cache_tokens} cache tokens cannot hold one row: the longest prompt "
                              f"({longest_prompt} tokens) and {n} new tokens ({key})"
                              + (f" with {rl.draft_tokens} draft positions" if rl.speculative else "")
                              + f" take {need} in blocks of {block}; set at least that, or 0 for no limit")


def response_limits(rl, steps: int) -> list[tuple[str, int]]:
    """(key, response length) of every length a run of `steps` steps reaches: rl.max_new_tokens
    unless a schedule entry replaces it from step 0, and each entry reached before `steps`."""
    limits = [(f"rl.max_new_tokens_schedule[{i}]", n) for i, (at, n) in enumerate(rl.max_new_tokens_schedule)
              if at < steps]
    if not any(at <= 0 for at, _ in rl.max_new_tokens_schedule):
        limits.insert(0, ("rl.max_new_tokens", rl.max_new_tokens))
    return limits


def max_new_tokens_at(rl: RLConfig, step: int) -> int:
    """rl.max_new_tokens, switched by rl.max_new_tokens_schedule ([[step, tokens], ...])."""
    tokens = rl.max_new_tokens
    for at, n in rl.max_new_tokens_schedule:
        if step >= at:
            tokens = n
    return tokens


def rollout_problems(rl: RLConfig, ps: ParallelState, source: PromptSource, position: int,
                     index: int) -> tuple[list[dict], list[int]]:
    """This DP rank's questions of rollout `index` and their indices within the rollout. The rollout
    holds `minibatches` consecutive blocks of prompts_per_step questions (global positions from
    `position`); each DP rank takes its slice of every block, so minibatch j is the same questions
    on any layout and this rank's questions of minibatch j are its j-th contiguous share."""
    P, M = rl.prompts_per_step, rl.minibatches
    everyone = source.take(position, P * M, index)
    share = P // ps.dp
    at = [j * P + ps.r("dp") * share + i for j in range(M) for i in range(share)]
    return [everyone[g] for g in at], at


def ended_by_eos(source: PromptSource, ids: list[int]) -> bool:
    return bool(ids) and ids[-1] in source.tok.eos_ids


def sample_rollout(run: Run, chunks, optimizer, source: PromptSource, problems: list[dict], where: list[int],
                   step: int, index: int) -> ScoredRollout:
    """G samples per question on the training shards, then the rewards of each output. where: the
    questions' indices in the rollout, which key the sampling noise (layout-independent samples)."""
    batch_invariant.hold_threads("rollout")  # rl.exact_rollouts: the count the run started at
    cfg, ps, tok = run.cfg, run.ps, source.tok
    G = cfg.rl.group_size
    limit = max_new_tokens_at(cfg.rl, step)
    outputs = [p for p in problems for _ in range(G)]
    rendered = [source.render(p) for p in problems]
    rendered = [r for r in rendered for _ in range(G)]
    prompt_ids = [source.encode(r) for r in rendered]
    gen = GenerationConfig(limit, cfg.rl.temperature, cfg.rl.top_p, cfg.rl.top_k, tok.eos_id, source.stop(),
                           seed=cfg.seed + index, record_routing=cfg.rl.routing_replay,
                           vocab_size=tok.vocab_size, speculative=cfg.rl.speculative, draft_tokens=cfg.rl.draft_tokens,
                           max_rows=cfg.rl.rollout_max_rows, max_cache_tokens=cfg.rl.rollout_cache_tokens,
                           eos_ids=tok.eos_ids, compile_decode=cfg.rl.compile_decode)
    rows = torch.tensor([g * G + k for g in where for k in range(G)], dtype=torch.long)
    with optimizer.offloaded(run.device.type == "cuda"):  # the KV cache takes the GPU memory the states leave
        rollout = generate(chunks, ps, prompt_ids, gen, rows=rows)
    responses, truncated = [], []
    for ids, r in zip(rollout.completions(), rendered):
        text = source.response_text(r, ids)
        responses.append(text)
        truncated.append(len(ids) >= limit and not ended_by_eos(source, ids) and not source.is_stopped(text))
    # one verdict per model replica, every program of the batch at once
    terms = judge_batch(ps, cfg.rl.rewards, responses, outputs, cfg.rl.answer_fallback, run.device)
    rewards = torch.tensor([sum(t.values()) for t in terms], dtype=torch.float64, device=run.device)
    lengths = rollout.completion_mask.sum(1)
    rewards += overlong_shaping(lengths, limit, cfg.rl.overlong_buffer, cfg.rl.overlong_penalty).to(rewards)
    return ScoredRollout(rollout, outputs, rendered, responses, terms, rewards,
                         torch.tensor(truncated, dtype=torch.bool, device=run.device), limit)


# ---- DAPO's dynamic sampling -----------------------------------------------------------------

POOL_INDEX_STRIDE = 1_000_003  # synthetic problems of a pool round never repeat a rollout's


def pool_size(missing: int, found: int, drawn: int, cap: int) -> int:
    """Prompts to draw for `missing` empty slots when `found` of the `drawn` groups so far were
    informative: enough that the expected informative groups exceed `missing` by one standard
    deviation (binomial, one round fills the slots ~5 times in 6), at most `cap`. Depends only on
    global counts, never on the layout."""
    q = max(found, 1) / max(drawn, 1)
    want = (missing + math.sqrt(missing * (1.0 - q))) / q
    return max(1, min(cap, math.ceil(want - 1e-9)))


def share(size: int, dp: int, rank: int) -> range:
    """DP rank `rank`'s contiguous share of a pool of `size` groups (near-equal; some may be empty)."""
    return range(size * rank // dp, size * (rank + 1) // dp)


def pool_problems(source, position: int, where: int, index: int, size: int,
                  mine: range) -> tuple[list[dict], list[int]]:
    """This rank's problems of a pool of `size` prompts starting at prompt position `position`, and
    their indices in the rollout from `where` on (which key their sampling noise). index: the
    pool's own synthetic problems (PromptSource.take)."""
    everyone = source.take(position, size, index)
    return [everyone[e] for e in mine], [where + e for e in mine]


def _dp_sum(t: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    if ps.g("dp") is not None:
        dist.all_reduce(t, group=ps.g("dp"))
    return t


def merge_scored(draws: list, chosen: list[tuple[int, int]], group_size: int):
    """One ScoredRollout of the chosen groups of several draws, in the order given (groups stay
    contiguous; neighbouring groups of one draw go as one part)."""
    G = group_size
    parts: list[tuple[int, list[int]]] = []
    for d, g in chosen:
        if parts and parts[-1][0] == d:
            parts[-1][1].extend(range(g * G, (g + 1) * G))
        else:
            parts.append((d, list(range(g * G, (g + 1) * G))))
    used = [(d, torch.tensor(r, dtype=torch.long)) for d, r in parts]
    pick = lambda name: [getattr(draws[d], name)[i] for d, idx in used for i in idx.tolist()]  # noqa: E731
    rollout = merge_rollouts([(draws[d].rollout, idx.to(draws[d].rollout.tokens.device)) for d, idx in used])
    return replace(draws[0], rollout=rollout, problems=pick("problems"), rendered=pick("rendered"),
                   responses=pick("responses"), terms=pick("terms"),
                   rewards=torch.cat([draws[d].rewards[idx.to(draws[d].rewards.device)] for d, idx in used]),
                   truncated=torch.cat([draws[d].truncated[idx.to(draws[d].truncated.device)] for d, idx in used]))


def _on(scored, device):
    """The ScoredRollout with its tensors on `device` (CPU to travel between ranks); the engine's work
    counts stay with the rank that did the work."""
    ro = scored.rollout
    ro = replace(ro, tokens=ro.tokens.to(device), pad=ro.pad.to(device), completion_mask=ro.completion_mask.to(device),
                 logprobs=ro.logprobs.to(device), routing={k: v.to(device) for k, v in ro.routing.items()},
                 **{k: 0 for k in Rollout.WORK_COUNTS})
    return replace(scored, rollout=ro, rewards=scored.rewards.to(device), truncated=scored.truncated.to(device))


def exchange(moves: list[tuple[int, int, object]], ps: ParallelState, device) -> dict[int, list]:
    """moves: (from DP rank, to DP rank, payload: this rank's object when it is the sender, else None),
    the same list on every rank. Sends each pair's payloads in one message, pairs in one global order
    (lower DP rank first), so no two ranks wait on each other. {from rank: received payloads}."""
    me, ranks = ps.r("dp"), ps.members.get("dp", [ps.rank])
    received: dict[int, list] = {}
    pairs = sorted({tuple(sorted((a, b))) for a, b, _ in moves if me in (a, b)})
    for lo, hi in pairs:
        for a, b in ((lo, hi), (hi, lo)):
            batch = [p for s, t, p in moves if (s, t) == (a, b)]
            if not batch:
                continue
            if me == a:
                dist.send_object_list([[_on(p, torch.device("cpu")) for p in batch]], dst=ranks[b])
            else:
                got = [None]
                dist.recv_object_list(got, src=ranks[a])
                received.setdefault(a, []).extend(_on(p, device) for p in got[0])
    return received


def draw_until_informative(first, slots: list[int], draw: Callable[[int, int, int, range], object],
                           group_size: int, max_draws: int, ps: ParallelState, device):
    """first: this rank's ScoredRollout of its group slots, whose indices in the rollout are `slots`
    (in order; every rank as many); draw(round, offset, size, mine): this rank's groups `mine` of
    round's pool of `size` prompts, the pools' `offset`-th prompt onward (round = 1, 2, ...).
    Returns the rollout to train on (this rank's slots, in order) and its counts for the step
    metrics (global over ranks)."""
    G, dp, me = group_size, ps.dp, ps.r("dp")
    if len(first.responses) != len(slots) * G:
        raise ValueError(f"dynamic sampling: {len(first.responses)} samples for {len(slots)} slots of {G}")
    block = len(slots) * dp  # the rollout's slots over all ranks
    # every slot's informative flag and owner (DP rank), one all-reduce
    table = torch.zeros(2, block, dtype=torch.float64, device=device)
    table[0, slots] = (~equal_reward_groups(first.rewards, G)).to(table)
    table[1, slots] = float(me)
    table = _dp_sum(table, ps).cpu()
    owner = table[1].long().tolist()
    empty = [s for s in range(block) if not table[0, s]]
    found, drawn, extra, rounds = int(table[0].sum()), block, 0, 0
    fills: dict[int, tuple[int, int]] = {}  # slot -> (round, group in its pool)
    pools = []  # per round: (size, this rank's ScoredRollout of its share)
    while len(fills) < len(empty) and rounds < max_draws and extra < max_draws * block:
        size = pool_size(len(empty) - len(fills), found, drawn, max_draws * block - extra)
        mine = share(size, dp, me)
        scored = draw(rounds + 1, extra, size, mine)
        if len(scored.responses) != len(mine) * G:
            raise ValueError(f"dynamic sampling: pool {rounds + 1} gave {len(scored.responses)} samples for "
                             f"{len(mine)} prompts of {G}")
        flags = torch.zeros(size, dtype=torch.float64, device=device)
        flags[mine.start:mine.stop] = (~equal_reward_groups(scored.rewards, G)).to(flags)
        flags = _dp_sum(flags, ps).cpu().tolist()
        for e in range(size):  # informative groups in pool order fill the empty slots in slot order
            if flags[e] and len(fills) < len(empty):
                fills[empty[len(fills)]] = (rounds, e)
        pools.append((size, scored))
        found, drawn, extra, rounds = found + int(sum(flags)), drawn + size, extra + size, rounds + 1

    def source(r: int, e: int) -> tuple[int, int]:  # (DP rank that drew pool r's group e, its local index)
        size = pools[r][0]
        d = next(d for d in range(dp) if e in share(size, dp, d))
        return d, e - share(size, dp, d).start

    moves = []  # (from, to, payload) in the order of the receiving ranks' slots
    for slot in sorted(fills):
        r, e = fills[slot]
        d, g = source(r, e)
        if d != owner[slot]:
            moves.append((d, owner[slot], merge_scored([pools[r][1]], [(0, g)], G) if d == me else None))
    received = exchange(moves, ps, device) if moves else {}
    draws, chosen, cursor = [first] + [s for _, s in pools], [], {}
    for i, slot in enumerate(slots):
        if slot not in fills:
            chosen.append((0, i))
            continue
        d, g = source(*fills[slot])
        if d == me:
            chosen.append((1 + fills[slot][0], g))
        else:  # the next group received from rank d
            k = cursor.get(d, 0)
            cursor[d] = k + 1
            draws.append(received[d][k])
            chosen.append((len(draws) - 1, 0))
    counts = {"dynamic_extra_draws": float(rounds), "dynamic_extra_prompts": float(extra),
              "dynamic_informative_groups": float(found), "dynamic_drawn_groups": float(drawn),
              "dynamic_filled_groups": float(len(empty) - len(fills)), "dynamic_moved_groups": float(len(moves))}
    scored = first if all(d == 0 for d, _ in chosen) else merge_scored(draws, chosen, G)
    # the step's cache and work numbers are every draw this rank ran, each once (received groups bring
    # none), whichever groups were chosen: a merge alone counts only the draws it takes groups from
    own = work_of([first.rollout] + [s.rollout for _, s in pools])
    return replace(scored, rollout=replace(scored.rollout, **own)), counts
