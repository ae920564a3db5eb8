"""Sampling from vocab-parallel logits without gathering the vocabulary on one rank.

Each TP rank holds logits for its vocab shard. Temperature scales them; top-k keeps the k
largest (threshold from the ranks' local top-k, all-gathered: k values per rank); top-p keeps
the smallest top set with probability >= p (threshold found by bisection, one all-reduce of a
per-row sum per iteration). Sampling is Gumbel-max with counter-based noise: the uniform for
(row, step, vocab index) is a hash of those numbers (splitmix64), so each rank computes only its
slice, and argmax(logits + noise) over the shards equals the one-process sample for the same
seed, whatever the TP size.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from r1mega.kernels import batch_invariant
from r1mega.parallel.comm import all_gather_nograd, sum_in_rank_order
from r1mega.parallel.layout import ParallelState

BISECTION_STEPS = 48


def _all_reduce(t: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if group is not None and op == dist.ReduceOp.SUM and dist.get_world_size(group) > 2 and batch_invariant.enabled():
        return t.copy_(sum_in_rank_order(t, group))  # in place, as all_reduce (rl.exact_rollouts)
    if group is not None:
        dist.all_reduce(t, op=op, group=group)
    return t


def _global_argmax(values: torch.Tensor, start: int, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise argmax over vocab shards: (global index, max value)."""
    best, idx = values.max(dim=-1)
    if group is None:
        return idx, best
    pairs = torch.stack([best, (idx + start).to(best.dtype)], dim=-1)  # [b, 2]
    gathered = all_gather_nograd(pairs.unsqueeze(0).contiguous(), group)  # [tp, b, 2]
    winner = gathered[..., 0].argmax(dim=0)  # first rank wins ties, like a single argmax
    chosen = gathered.gather(0, winner[None, :, None].expand(1, -1, 2))[0]
    return chosen[:, 1].long(), chosen[:, 0]


def log_softmax_at(logits: torch.Tensor, tokens: torch.Tensor, start: int, group) -> torch.Tensor:
    """log softmax(logits)[token] per row, from shards."""
    gmax = _all_reduce(logits.max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
    z = _all_reduce((logits - gmax[:, None]).exp().sum(-1), group)
    local = tokens - start
    inside = (local >= 0) & (local < logits.shape[-1])
    picked = logits.gather(1, local.clamp(0, logits.shape[-1] - 1)[:, None])[:, 0].masked_fill(~inside, 0.0)
    picked = _all_reduce(picked, group)
    return picked - gmax - z.log()


_M64 = (1 << 64) - 1


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:  # logical right shift of int64
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps like uint64)."""
    x = (x ^ _shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def uniform_noise(row_keys: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """Uniforms in (0, 1) for columns [first, first + n) of rows keyed by row_keys [b] (int64)."""
    cols = torch.arange(first, first + n, dtype=torch.int64, device=row_keys.device)
    z = _mix(_mix(row_keys)[:, None] + cols[None, :] * _signed(0x9E3779B97F4A7C15))
    return (_shr(z, 11).double() + 0.5) / float(1 << 53)


def row_keys(seed: int, step, rows: torch.Tensor) -> torch.Tensor:
    """One key per (seed, decode step, global row). step: an int, or one per row (a tensor [b]) when
    the rows are at different positions of their completions (continuous batching)."""
    base = torch.as_tensor(step, dtype=torch.int64, device=rows.device).reshape(-1) + seed * 1_000_003
    return _mix(_mix(base) + rows.to(torch.int64) * _signed(0xD1B54A32D192ED03))


def _mix_host(x: int) -> int:
    """`_mix` on a uint64 held in a Python int."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def row_keys_host(seed: int, steps: list[int], rows: list[int], device=None) -> torch.Tensor:
    """`row_keys(seed, tensor(steps), tensor(rows))`, bitwise, hashed on the host: for the few rows of
    a decoding step two dozen int64 ops on [b] tensors cost more than the Python arithmetic."""
    keys = []
    for step, row in zip(steps, rows):
        k = (_mix_host((step + seed * 1_000_003) & _M64) + row * 0xD1B54A32D192ED03) & _M64
        keys.append(_signed(_mix_host(k)))
    return torch.tensor(keys, dtype=torch.int64, device=device)


def _bisection_settled(masked, probs, total, top_p: float, lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """The rest of the bisection, decided now (one process: a decoding step of a small model spent
    most of its ops in the 48 rounds). Once no logit lies strictly between lo and hi, every later
    midpoint keeps the same logits, those >= hi, so every later round decides alike: all rows that
    were `ok` there end with the support {>= hi}, the others keep {>= lo}, exactly what the rounds
    would give (unless lo and hi are neighbouring floats: a midpoint then rounds to an end; those
    rows bisect on). Sets lo in place to the final threshold and returns True, or returns False."""
    if ((masked > lo[:, None]) & (masked < hi[:, None])).any():
        return False
    ok = (probs * (masked >= hi[:, None])).sum(-1) / total >= top_p
    if (ok & (torch.nextafter(lo, hi) == hi)).any():
        return False
    lo.copy_(torch.where(ok, hi, lo))
    return True


@torch.no_grad()
def sampler_support(scaled: torch.Tensor, ps: ParallelState, top_p: float, top_k: int,
                    vocab: Optional[int] = None) -> torch.Tensor:
    """scaled logits [..., V/tp] (this rank's shard, already / T) -> bool [..., V/tp]: the tokens the
    sampler may draw: real ids (not the embedding's padding past the tokenizer's `vocab`), top-k by
    the k-th largest value, then top-p by the largest threshold whose kept mass reaches top_p. The
    one rule for sampling and for GRPO's keep-sampling-mask (rl/policy_scores.py)."""
    group = ps.g("tp")
    shape = scaled.shape
    scaled = scaled.reshape(-1, shape[-1]).float()
    n_local = scaled.shape[-1]
    start = ps.r("tp") * n_local
    vocab = vocab or n_local * ps.tp
    real = torch.arange(start, start + n_local, device=scaled.device) < vocab
    keep = real[None, :].expand_as(scaled).clone()
    if 0 < top_k < vocab:
        # rank only real ids: padded ids must neither be kept nor push real ones out of the top k
        local_top = scaled.masked_fill(~real, float("-inf")).topk(min(top_k, n_local), dim=-1).values  # [b, k']
        everyone = all_gather_nograd(local_top.t().contiguous(), group).t() if group is not None else local_top
        keep &= scaled >= everyone.topk(top_k, dim=-1).values[:, -1:]
    if top_p < 1.0:
        masked = scaled.masked_fill(~keep, float("-inf"))
        gmax = _all_reduce(masked.max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
        probs = (masked - gmax[:, None]).exp()
        total = _all_reduce(probs.sum(-1), group)
        lo = _all_reduce(masked.masked_fill(~keep, float("inf")).min(dim=-1).values.clone(), group, dist.ReduceOp.MIN)
        hi = gmax.clone()
        for i in range(BISECTION_STEPS):  # largest threshold whose kept mass still reaches top_p
            mid = (lo + hi) / 2
            ok = _all_reduce((probs * (masked >= mid[:, None])).sum(-1), group) / total >= top_p
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
            if group is None and i % 4 == 3 and _bisection_settled(masked, probs, total, top_p, lo, hi):
                break
        keep &= scaled >= lo[:, None]
    return keep.view(shape)


def sample(logits: torch.Tensor, ps: ParallelState, temperature: float, top_p: float = 1.0, top_k: int = 0,
           keys: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [b, V/tp] (this rank's shard) -> (tokens [b], log-probs [b] under softmax(logits / T)),
    identical on every TP rank. temperature 0 is greedy. keys: per-row noise keys (`row_keys`).
    vocab_size: the tokenizer's vocabulary when smaller than the model's padded one."""
    group = ps.g("tp")
    logits = logits.float()
    n_local = logits.shape[-1]
    start = ps.r("tp") * n_local
    vocab = vocab_size or n_local * ps.tp
    # ids past the tokenizer's vocabulary (padding rows of the embedding) are never sampled; the
    # returned log-prob is still over the whole vocabulary, as the training forward computes it
    real = torch.arange(start, start + n_local, device=logits.device) < vocab
    if temperature <= 0:
        tokens, _ = _global_argmax(logits.masked_fill(~real, float("-inf")), start, group)
        return tokens, log_softmax_at(logits, tokens, start, group)
    scaled = logits / temperature
    if keys is None:
        keys = row_keys(0, 0, torch.arange(logits.shape[0], device=logits.device))
    gumbel = -torch.log(-torch.log(uniform_noise(keys, start, n_local))).to(torch.float32)
    perturbed = scaled + gumbel
    if 0 < top_k < vocab or top_p < 1.0 or vocab < n_local * ps.tp:  # else every id is in the support
        perturbed = perturbed.masked_fill(~sampler_support(scaled, ps, top_p, top_k, vocab), float("-inf"))
    tokens, _ = _global_argmax(perturbed, start, group)
    return tokens, log_softmax_at(scaled, tokens, start, group)
