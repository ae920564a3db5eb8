"""Generation on the training model itself, in inference mode, under any TP/PP/EP/DP layout.

Same processes, same parameter shards: no copy into another engine. `generate` is the rollout
engine of `continuous.py`: continuous batching over a paged cache (`paged_cache.py`; the family's
layer view: MLA's latent with absorbed projections, or per-head keys and values for the dense
students), a prompt prefilled once for all its samples, finished rows retired at once. Its result
keeps the static layout (left-padded prompts, completions, pads after the end) so GRPO's update
and routing replay line up token for token. `generate_static` is the former lockstep engine (every
row decodes until the longest ends, caches preallocated), kept as the tests' and benchmarks'
reference. The last pipeline stage samples and broadcasts the tokens to the other stages.
Sequence parallelism is switched off while generating (one new token per sequence cannot be
split); the same weights serve both modes.
"""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.kernels.block_attention import documents_from_pad, left_pad
from r1mega.inference.continuous import ContinuousBatcher, step_group
from r1mega.inference.sampling import row_keys, sample
from r1mega.kernels.cpu_experts import decoding_spreads, experts_over_cores
from r1mega.parallel.layout import ParallelState, sequence_parallel_off
from r1mega.parallel.pipeline import recv_activation, send_activation


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_id: Optional[int] = None
    stop: Optional[Callable[[list[int]], bool]] = None  # e.g. a stop-string check on decoded text
    seed: int = 0
    record_routing: bool = False
    vocab_size: Optional[int] = None  # the tokenizer's, when the model's embedding is padded past it
    max_rows: int = 0  # rows decoding at once (0: all); the rest wait in the queue and refill freed places
    max_cache_tokens: int = 0  # cache budget per stage (0: none), held at every step: admission waits for room,
    # and the youngest rows are preempted (requeued, recomputed later, tokens kept) when the live rows outgrow
    # it; below what one row can need (continuous.row_need_tokens) it is refused before any forward
    block_size: int = 16  # tokens per block of the paged cache
    pipelined_decode: bool = True  # under PP: up to pp groups of rows in flight (False: one batch per step)
    # rows a group in flight holds at least: splitting rows pays where a forward's time grows with its
    # rows (measured: the tiny model's decoding step is per-op overhead, and 2 groups of few rows cost
    # 1.3x-2.5x the CPU of one); fewer live rows decode as one group, the pipeline flushed every step
    pipelined_min_rows: int = 16
    # self-speculative decoding: "mtp" drafts with the model's own MTP module (inference/speculative.py)
    speculative: Optional[str] = None
    draft_tokens: int = 1  # drafts verified per row and step
    # further ids that end a row as EOS does (generation_config.json's eos_token_id list: Llama 3.1 and
    # Qwen2.5 Instruct end a turn with one, the text with another), as transformers' generate stops
    eos_ids: tuple[int, ...] = ()
    # few-row decoding steps (the long tail) as one compiled graph: forward and sampler fused by
    # torch.compile (inference/compiled_decode.py); one process, not under rl.exact_rollouts (there
    # and where it cannot run the eager step is taken). Float-tolerance equal, not bitwise, to eager
    compile_decode: bool = False

    def __post_init__(self):
        # a row draws its first token before any length check: 0 new tokens would silently give 1
        for name, least in (("max_new_tokens", 1), ("block_size", 1), ("draft_tokens", 1), ("max_rows", 0),
                            ("max_cache_tokens", 0)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise ValueError(f"GenerationConfig.{name} must be an integer >= {least}, got {value!r}")


@dataclass
class Rollout:
    tokens: torch.Tensor  # [B, P + N]: left-padded prompt, then completion (EOS/pad after the end)
    prompt_len: int  # P, the padded prompt length
    pad: torch.Tensor  # [B] left-pad length of each prompt
    completion_mask: torch.Tensor  # [B, P + N] True on generated tokens up to and including the stop
    logprobs: torch.Tensor  # [B, P + N] log-prob of each generated token when it was sampled (0 elsewhere)
    routing: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> experts [P + N, B, k]
    cache_values_per_token_layer: int = 0
    cache_bytes: int = 0  # the cache this rollout needed: peak blocks in use (static engine: its allocation)
    cache_pool_bytes: int = 0  # what the paged pool allocated (it grows by a quarter when full)
    decode_row_steps: int = 0  # rows fed to decoding forwards, summed over steps (static: all rows every step)
    forwards: int = 0  # model forwards this rank ran (equal on every rank of an expert-parallel group)
    preemptions: int = 0  # rows requeued to keep the cache within GenerationConfig.max_cache_tokens
    prefill_tokens: int = 0  # tokens fed to prompt prefills and to preempted rows' recomputation (this rank)
    recomputed_tokens: int = 0  # ... of which to recompute preempted rows (on top of their prompt's kept blocks)
    draft_tokens: int = 0  # speculative decoding: drafts verified (this rank's rows)
    draft_accepted: int = 0  # ... and accepted

    # the engine's work counts above: rollouts drawn one after another (dynamic sampling) add them up
    WORK_COUNTS = ("decode_row_steps", "forwards", "preemptions", "prefill_tokens", "recomputed_tokens",
                   "draft_tokens", "draft_accepted")

    @property
    def position_ids(self) -> torch.Tensor:
        n = self.tokens.shape[1]
        return (torch.arange(n, device=self.tokens.device)[None, :] - self.pad[:, None]).clamp(min=0)

    def completions(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.tokens, self.completion_mask)]


def _dp_min(value: int, ps: ParallelState, device) -> int:
    if ps.g("dp") is None:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ps.g("dp"))
    return int(t.item())


def left_padded_causal_mask(pad: torch.Tensor, n: int) -> torch.Tensor:
    """bool [b, 1, n, n]: causal, pad keys hidden; every position sees itself (pad rows stay finite).
    The dense equivalent of `documents_from_pad(pad, n)`; a reference for tests (O(n^2) memory)."""
    idx = torch.arange(n, device=pad.device)
    valid = idx[None, :] >= pad[:, None]
    causal = idx[None, :] <= idx[:, None]
    return ((causal[None] & valid[:, None, :]) | (idx[None, :] == idx[:, None])[None]).unsqueeze(1)


@contextlib.contextmanager
def _mode_restored(model, was_training: bool):
    """Give the model its training mode back however generation ends (an exception included)."""
    try:
        yield
    finally:
        model.train(was_training)


def _one_chunk(model):
    if isinstance(model, torch.nn.ModuleList):
        if len(model) != 1:
            raise ValueError("generation runs on one model chunk per rank (train.virtual_stages=1)")
        model = model[0]
    return model


def cp_share(n: int, cp: int, rank: int) -> list[int]:
    """CP rank `rank`'s contiguous, near-equal share of n rows (the first n % cp ranks one more)."""
    per, extra = divmod(n, cp)
    start = rank * per + min(rank, extra)
    return list(range(start, start + per + (rank < extra)))


@torch.no_grad()
def generate(model, ps: ParallelState, prompts: list[list[int]], gen: GenerationConfig,
             row_offset: int = 0, microbatches: Optional[int] = None, rows: Optional[torch.Tensor] = None) -> Rollout:
    """Sample completions for this DP rank's prompts with continuous batching over a paged cache
    (`continuous.py`). `model` is this rank's pipeline stage (or a one-element ModuleList).
    row_offset: key of the first prompt's noise (the rest follow: distinct noise per row); rows:
    each prompt's noise key instead (e.g. its global index, or a (problem, sample) key). The
    result is laid out as the static engine's: left-padded prompts, completions, pads after the end.
    microbatches: unused (under PP the engine forms its own groups of rows in flight; kept for
    callers of the static engine)."""

    model = _one_chunk(model)  # every family has a paged cache (ModelFamily: paged_kv_layout)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    keys = (list(range(row_offset, row_offset + len(prompts))) if rows is None else [int(k) for k in rows.tolist()])
    # under CP every CP rank holds the whole model and the same rows: each decodes a contiguous
    # share of them (a prompt's samples, which callers list together, stay on one or two ranks, so
    # its prefill is shared there rather than repeated on every CP rank), then the ranks sum their
    # disjoint parts of the result
    mine = cp_share(len(prompts), ps.cp, ps.r("cp"))
    engine_cls = ContinuousBatcher
    if gen.speculative:
        from r1mega.inference.speculative import SpeculativeBatcher

        engine_cls = SpeculativeBatcher
    engine = engine_cls(model, ps, [prompts[i] for i in mine], [keys[i] for i in mine], gen)
    # inference mode: no version counters or view tracking, ~15% of a small model's decoding step;
    # nothing made inside leaves the engine (the rollout below is built from its lists)
    with sequence_parallel_off(ps), _mode_restored(model, was_training), torch.inference_mode():
        engine.run()
    pad_id = engine.pad_id
    ids, pad = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    N = _group_max_int(max((len(r.out) for r in engine.rows), default=0), ps, step_group(ps), device)
    tokens = torch.zeros(B, P + N, dtype=torch.long, device=device)
    tokens[mine] = torch.cat([ids[mine], torch.full((len(mine), N), pad_id, dtype=torch.long, device=device)], 1)
    mask = torch.zeros(B, P + N, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, P + N, device=device)
    for r in engine.rows:
        n, i = len(r.out), mine[r.index]
        tokens[i, P:P + n] = torch.tensor(r.out, dtype=torch.long)
        logprobs[i, P:P + n] = torch.tensor(r.logps)
        mask[i, P:P + n] = 1
    routing = {}
    if gen.record_routing:
        width = max(P + N - 1, 0)  # (no rows anywhere: nothing routed)
        dtype = routing_dtype(getattr(model.cfg, "n_routed_experts", 0))
        local = engine.routing(P, width, dtype)
        for layer in _moe_layers(model):  # every rank the same layers, rows or not (CP sums them)
            routing[layer] = torch.zeros(width, B, model.cfg.num_experts_per_tok, dtype=dtype, device=device)
            if layer in local:
                routing[layer][:, mine] = local[layer]
    if ps.cp > 1:  # disjoint rows: the sums are the whole result, exactly
        for t in (tokens, mask, logprobs, *routing.values()):
            dist.all_reduce(t, group=ps.g("cp"))
    mask = mask.bool()
    pool = engine.pool
    draft_pool = getattr(engine, "mtp_pool", None)  # speculative decoding: the draft's own cache
    draft_bytes = (draft_pool.peak_bytes(), draft_pool.pool_bytes()) if draft_pool is not None else (0, 0)
    return Rollout(tokens, P, pad, mask, logprobs, routing, pool.values_per_token_per_layer(),
                   pool.peak_bytes() + draft_bytes[0], pool.pool_bytes() + draft_bytes[1],
                   engine.decode_row_steps, engine.forwards, preemptions=engine.preemptions,
                   prefill_tokens=engine.prefill_tokens, recomputed_tokens=engine.recomputed_tokens,
                   draft_tokens=getattr(engine, "drafted", 0), draft_accepted=getattr(engine, "accepted", 0))


def routing_dtype(num_experts: int) -> torch.dtype:
    """The type of a rollout's recorded experts: the smallest integer type that holds an expert id and
    that collectives carry (NCCL has no int16). The record is [positions, rows, k] per MoE layer, padded
    to the longest row; at DeepSeek-V3's 256 experts, uint8 takes 1/8 of int64's bytes (R1's 64K-token
    rows: 68 GB of int64 per GPU of a 4-layer stage for 4,096 rows of a DP rank). The MoE layer takes
    them back as int64, a microbatch at a time, when it replays them."""
    return torch.uint8 if num_experts <= 256 else torch.int32


def _group_max_int(value: int, ps: ParallelState, group: str, device) -> int:
    if ps.g(group) is None:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ps.g(group))
    return int(t.item())


def _moe_layers(model) -> list[int]:
    is_moe = getattr(model.cfg, "is_moe_layer", None)
    return [i for i in model.layer_ids if is_moe is not None and is_moe(i)]


@torch.no_grad()
def generate_static(model, ps: ParallelState, prompts: list[list[int]], gen: GenerationConfig,
                    row_offset: int = 0, microbatches: Optional[int] = None,
                    rows: Optional[torch.Tensor] = None) -> Rollout:
    """The static engine, kept as the reference for tests and benchmarks: every row decodes until the
    longest of the batch (across DP) ends, each row's cache preallocated for prompt + max_new_tokens,
    each sample prefilling its prompt again. Same noise keying as `generate`."""
    if not prompts:
        raise ValueError("generate_static: no prompts")
    if isinstance(model, torch.nn.ModuleList):
        if len(model) != 1:
            raise ValueError("generation runs on one model chunk per rank (train.virtual_stages=1)")
        model = model[0]
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    pad_id = gen.eos_id if gen.eos_id is not None else 0
    ids, pad = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    total = P + gen.max_new_tokens
    # Expert parallelism spans data-parallel ranks, so every DP rank must run the same number of
    # forwards per step: microbatch count and stopping step are agreed over the DP group.
    m = min(microbatches or ps.pp, _dp_min(B, ps, device))
    bounds = [(i * B // m, (i + 1) * B // m) for i in range(m)]
    valid = torch.arange(total, device=device)[None, :] >= pad[:, None]
    caches = [model.new_kv_cache(hi - lo, total, valid[lo:hi], dtype, device) for lo, hi in bounds]
    tokens = torch.cat([ids, torch.full((B, gen.max_new_tokens), pad_id, dtype=torch.long, device=device)], 1)
    logprobs = torch.zeros(B, total, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    mask = torch.zeros(B, total, dtype=torch.bool, device=device)
    pp_ranks = ps.members.get("pp", [ps.rank])
    prev = pp_ranks[ps.r("pp") - 1] if not model.is_first else None
    nxt = pp_ranks[ps.r("pp") + 1] if not model.is_last else None
    rows = torch.arange(row_offset, row_offset + B, device=device) if rows is None else rows.to(device)

    # few rows per routed expert (GEMV-like expert GEMMs): on a multi-core CPU spread the experts over
    # the cores (kernels/cpu_experts.py) from the first decoding step on; the prompt's forward keeps
    # every intra-op thread (with one, a 512-token prompt's prefill ran 1.65x slower)
    spread = decoding_spreads(model, B, device)
    with sequence_parallel_off(ps), _mode_restored(model, was_training), contextlib.ExitStack() as decoding:
        for step in range(gen.max_new_tokens):
            if step == 1 and spread:
                decoding.enter_context(experts_over_cores(device))
            start = 0 if step == 0 else P + step - 1
            end = P + step
            new_tok = torch.zeros(B, dtype=torch.long, device=device)
            new_lp = torch.zeros(B, device=device)
            for (lo, hi), cache in zip(bounds, caches):
                inp = tokens[lo:hi, start:end]
                pos = (torch.arange(start, end, device=device)[None, :] - pad[lo:hi, None]).clamp(min=0)
                hidden = None
                if prev is not None:
                    hidden = recv_activation((end - start, hi - lo, model.hidden_size), dtype, device, prev)
                out = model(inp, hidden=hidden, position_ids=pos, cache=cache, last_logits_only=True)
                if nxt is not None:
                    send_activation(out.hidden, nxt)
                    continue
                keys = row_keys(gen.seed, step, rows[lo:hi])
                tok, lp = sample(out.logits[-1], ps, gen.temperature, gen.top_p, gen.top_k, keys,
                                 gen.vocab_size or model.vocab_size)
                new_tok[lo:hi], new_lp[lo:hi] = tok, lp
            if ps.pp > 1:  # the last stage tells every stage what was sampled
                both = torch.stack([new_tok.double(), new_lp.double()])
                dist.broadcast(both, src=pp_ranks[-1], group=ps.g("pp"))
                new_tok, new_lp = both[0].long(), both[1].float()
            live = ~done
            tokens[:, end] = torch.where(live, new_tok, torch.full_like(new_tok, pad_id))
            logprobs[:, end] = torch.where(live, new_lp, torch.zeros_like(new_lp))
            mask[:, end] = live
            for eos in {gen.eos_id, *gen.eos_ids} - {None}:
                done |= live & (new_tok == eos)
            if gen.stop is not None:
                for b in torch.nonzero(live & ~done).flatten().tolist():
                    if gen.stop(tokens[b, P:end + 1][mask[b, P:end + 1]].tolist()):
                        done[b] = True
            if _dp_min(int(done.all()), ps, device):
                break
    used = P + step + 1
    routing = {}
    if gen.record_routing:
        per_layer = [c.routing() for c in caches]
        for layer in per_layer[0]:
            routing[layer] = torch.cat([p[layer] for p in per_layer], dim=1)[:used].to(
                routing_dtype(getattr(model.cfg, "n_routed_experts", 0)))
    nbytes = sum(c.nbytes() for c in caches)
    rollout = Rollout(tokens[:, :used], P, pad, mask[:, :used], logprobs[:, :used], routing,
                      caches[0].values_per_token_per_layer(), nbytes, nbytes, B * (step + 1), m * (step + 1))
    del caches  # the KV cache is gone before any training step
    return rollout


@torch.no_grad()
def greedy_by_full_forward(model, ps: ParallelState, prompts: list[list[int]], max_new_tokens: int,
                           pad_id: int = 0) -> torch.Tensor:
    """Reference decoding without a cache: re-run the whole sequence for every new token."""
    model = model[0] if isinstance(model, torch.nn.ModuleList) else model
    model.eval()
    param = next(model.parameters())
    ids, pad = left_pad(prompts, pad_id, param.device)
    pp_ranks = ps.members.get("pp", [ps.rank])
    with sequence_parallel_off(ps):
        for _ in range(max_new_tokens):
            n = ids.shape[1]
            pos = (torch.arange(n)[None, :] - pad[:, None]).clamp(min=0)
            hidden = None
            if not model.is_first:
                hidden = recv_activation((n, ids.shape[0], model.hidden_size), param.dtype, param.device,
                                         pp_ranks[ps.r("pp") - 1])
            out = model(ids, hidden=hidden, position_ids=pos, attn_mask=documents_from_pad(pad, n))
            nxt = torch.zeros(ids.shape[0], dtype=torch.long)
            if not model.is_last:
                send_activation(out.hidden, pp_ranks[ps.r("pp") + 1])
            else:
                nxt, _ = sample(out.logits[-1], ps, 0.0)
            if ps.pp > 1:
                dist.broadcast(nxt, src=pp_ranks[-1], group=ps.g("pp"))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids
