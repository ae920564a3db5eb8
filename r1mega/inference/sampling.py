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

import bisect
import math
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from r1mega.kernels import batch_invariant
from r1mega.parallel.comm import all_gather_nograd, all_reduce_values
from r1mega.parallel.layout import ParallelState

BISECTION_STEPS = 48
FEW_ROWS_ON_HOST = 16  # top-p bisection rows run on the host (one process; measured faster up to ~20 rows)
WINDOW = 8  # ... deciding them by the exact kept mass at 2 * WINDOW + 1 thresholds around the crossing
HOST_WINDOW_ELEMENTS = 1 << 22  # ... while those masses take at most this many elements (rows x window x vocab)


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


def log_softmax_at(logits: torch.Tensor, tokens: torch.Tensor, start: int, group,
                   gmax: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log softmax(logits)[token] per row, from shards. gmax: the rows' maxima, known already (one shard)."""
    if group is None:  # one shard: every token inside it (the same numbers, fewer ops)
        gmax = logits.max(dim=-1).values if gmax is None else gmax
        z = batch_invariant.row_sum((logits - gmax[:, None]).exp())
        return logits.gather(1, tokens[:, None])[:, 0] - gmax - z.log()
    gmax = all_reduce_values(logits.max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
    z = all_reduce_values(batch_invariant.row_sum((logits - gmax[:, None]).exp()), group)
    local = tokens - start
    inside = (local >= 0) & (local < logits.shape[-1])
    picked = logits.gather(1, local.clamp(0, logits.shape[-1] - 1)[:, None])[:, 0].masked_fill(~inside, 0.0)
    picked = all_reduce_values(picked, group)
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


def _mix_np(x: np.ndarray) -> np.ndarray:
    """`_mix` on uint64 arrays (numpy wraps uint64 products as the int64 tensor ops do)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_COLUMN_HASHES: dict[tuple[int, int], np.ndarray] = {}  # (first, n) -> column terms of the hash


def uniform_noise(row_keys: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """Uniforms in (0, 1) for columns [first, first + n) of rows keyed by row_keys [b] (int64).
    On CPU the same integer arithmetic runs in numpy (bitwise equal; a tenth of the ops' overhead:
    a decoding step of few rows paid ~0.1 ms for the noise as tensor ops)."""
    if row_keys.device.type == "cpu":
        cols = _COLUMN_HASHES.get((first, n))
        if cols is None:
            cols = np.arange(first, first + n, dtype=np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            _COLUMN_HASHES[first, n] = cols
        z = _mix_np(_mix_np(row_keys.numpy().view(np.uint64))[:, None] + cols[None, :])
        return torch.from_numpy(((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53))
    cols = torch.arange(first, first + n, dtype=torch.int64, device=row_keys.device)
    z = _mix(_mix(row_keys)[:, None] + cols[None, :] * _signed(0x9E3779B97F4A7C15))
    return (_shr(z, 11).double() + 0.5) / float(1 << 53)


def gumbel_noise(row_keys: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """float32 Gumbel noise -log(-log(u)) for columns [first, first + n) of rows keyed by row_keys."""
    return -torch.log(-torch.log(uniform_noise(row_keys, first, n))).to(torch.float32)


def row_keys(seed: int, step, rows: torch.Tensor) -> torch.Tensor:
    """One key per (seed, decode step, global row). step: an int, or one per row (a tensor [b]) when
    the rows are at different positions of their completions (continuous batching)."""
    # the seed's term mod 2^64 as an int64 (the host hash's arithmetic): seed x 1,000,003 passes int64
    # from seed ~1.8e13 on, and a Python int that large does not convert to a tensor
    base = (torch.as_tensor(step, dtype=torch.int64, device=rows.device).reshape(-1)
            + _signed(seed * 1_000_003 & _M64))
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


def _bisection_on_host(masked, probs, total, top_p: float, lo: torch.Tensor, hi: torch.Tensor
                       ) -> Optional[torch.Tensor]:
    """The bisection's final thresholds for a few rows in one process on CPU (None: more rows, another
    device, a large vocabulary, a NaN, or a bracket not found: the tensor loop then runs). A round's verdict depends only on how many logits
    its midpoint keeps, and monotonically (a float sum of more non-negative terms in the same order
    is not smaller), so one count k* decides every round: those keeping >= k* logits reach top_p.
    k* comes from the loop's own expression (so its rounding) evaluated at a window of thresholds
    around where the sorted cumulative mass crosses top_p; the rounds then run on the host, each
    midpoint in float32 as the tensor loop computes it, ending as `_bisection_settled` does. The tail
    of a rollout is a few rows decoding alone; there the rounds were a quarter of a small model's
    decoding step."""
    b, V = masked.shape
    if (b > FEW_ROWS_ON_HOST or masked.device.type != "cpu"
            or b * (2 * WINDOW + 1) * V > HOST_WINDOW_ELEMENTS):  # (measured on CPU; a small temporary)
        return None
    desc = masked.sort(-1, descending=True).values
    below = ((desc - hi[:, None]).exp().cumsum(-1) / total[:, None] < top_p).sum(-1)  # ~ kept count - 1
    at = (below[:, None] + torch.arange(-WINDOW, WINDOW + 1, device=masked.device)).clamp(0, V - 1)
    thresholds = desc.gather(1, at)  # [b, W] descending
    verdicts = ((probs[:, None, :] * (masked[:, None, :] >= thresholds[:, :, None])).sum(-1)
                / total[:, None] >= top_p).tolist()
    ascending, thresholds, at = desc.flip(-1).tolist(), thresholds.tolist(), at.tolist()
    los, his, f32 = lo.tolist(), hi.tolist(), np.float32
    out = []
    for r, vals in enumerate(ascending):
        if vals[-1] != vals[-1] or not (math.isfinite(los[r]) and math.isfinite(his[r])):
            return None  # NaN logits: leave them to the tensor loop
        first = next((j for j, ok in enumerate(verdicts[r]) if ok), None)
        if first is None or (first == 0 and at[r][0] > 0):
            return None  # the crossing lies outside the window (rounding far off): the tensor loop

        def kept(threshold: float) -> int:
            return V - bisect.bisect_left(vals, threshold)

        need = kept(thresholds[r][first])
        a, b_ = f32(los[r]), f32(his[r])
        for _ in range(BISECTION_STEPS):
            mid = (a + b_) / f32(2)
            if kept(float(mid)) >= need:
                a = mid
            else:
                b_ = mid
            between = bisect.bisect_right(vals, float(a))
            if between == V or vals[between] >= float(b_):  # settled (see _bisection_settled)
                if kept(float(b_)) >= need:
                    if np.nextafter(a, b_) == b_:
                        continue  # neighbouring floats: a midpoint rounds to an end; bisect on
                    a = b_
                break
        out.append(float(a))
    return torch.tensor(out, dtype=masked.dtype, device=masked.device)


@torch.no_grad()
def sampler_support(scaled: torch.Tensor, ps: ParallelState, top_p: float, top_k: int,
                    vocab: Optional[int] = None) -> torch.Tensor:
    """scaled logits [..., V/tp] (this rank's shard, already / T) -> bool [..., V/tp]: the tokens the
    sampler may draw: real ids (not the embedding's padding past the tokenizer's `vocab`), top-k by
    the k-th largest value, then top-p by the largest threshold whose kept mass reaches top_p. The
    one rule for sampling and for GRPO's keep-sampling-mask (rl/policy_scores.py)."""
    group = ps.g("tp")
    shape = scaled.shape
    scaled = scaled.reshape(-1, shape[-1])
    scaled = scaled if scaled.dtype == torch.float32 else scaled.float()
    n_local = scaled.shape[-1]
    start = ps.r("tp") * n_local
    vocab = vocab or n_local * ps.tp
    # keep None: every id so far (no mask ops for a shard without padding ids: fewer ops, same support)
    real = keep = None
    if start + n_local > vocab:
        real = torch.arange(start, start + n_local, device=scaled.device) < vocab
        keep = real[None, :].expand_as(scaled).clone()
    if 0 < top_k < vocab:
        # rank only real ids: padded ids must neither be kept nor push real ones out of the top k
        ranked = scaled if real is None else scaled.masked_fill(~real, float("-inf"))
        local_top = ranked.topk(min(top_k, n_local), dim=-1).values  # [b, k']
        everyone = all_gather_nograd(local_top.t().contiguous(), group).t() if group is not None else local_top
        above = scaled >= everyone.topk(top_k, dim=-1).values[:, -1:]
        keep = above if keep is None else keep & above
    if top_p < 1.0:
        masked = scaled if keep is None else scaled.masked_fill(~keep, float("-inf"))
        gmax = all_reduce_values(masked.max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
        probs = (masked - gmax[:, None]).exp()
        total = all_reduce_values(probs.sum(-1), group)
        lowest = masked if keep is None else masked.masked_fill(~keep, float("inf"))
        lo = all_reduce_values(lowest.min(dim=-1).values.clone(), group, dist.ReduceOp.MIN)
        hi = gmax.clone()
        # (a compiled step runs the plain rounds: fused in its graph, where host decisions would break it)
        shortcut = group is None and not torch.compiler.is_compiling()
        host = _bisection_on_host(masked, probs, total, top_p, lo, hi) if shortcut else None
        for i in range(BISECTION_STEPS if host is None else 0):  # largest threshold whose kept mass reaches top_p
            mid = (lo + hi) / 2
            ok = all_reduce_values((probs * (masked >= mid[:, None])).sum(-1), group) / total >= top_p
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
            if shortcut and i % 4 == 3 and _bisection_settled(masked, probs, total, top_p, lo, hi):
                break
        above = scaled >= (lo if host is None else host)[:, None]
        keep = above if keep is None else keep & above
    if keep is None:
        keep = torch.ones_like(scaled, dtype=torch.bool)
    return keep.view(shape)


def sample(logits: torch.Tensor, ps: ParallelState, temperature: float, top_p: float = 1.0, top_k: int = 0,
           keys: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None,
           gumbel: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [b, V/tp] (this rank's shard) -> (tokens [b], log-probs [b] under softmax(logits / T)),
    identical on every TP rank. temperature 0 is greedy. keys: per-row noise keys (`row_keys`).
    vocab_size: the tokenizer's vocabulary when smaller than the model's padded one. gumbel: this
    shard's noise `gumbel_noise(keys, ...)`, drawn already (a compiled step takes it as an input)."""
    group = ps.g("tp")
    logits = logits if logits.dtype == torch.float32 else logits.float()
    n_local = logits.shape[-1]
    start = ps.r("tp") * n_local
    vocab = vocab_size or n_local * ps.tp
    # ids past the tokenizer's vocabulary (padding rows of the embedding) are never sampled; the
    # returned log-prob is still over the whole vocabulary, as the training forward computes it
    if temperature <= 0:
        if start + n_local <= vocab:  # every id real: no mask, and the argmax's maxima are the softmax's
            tokens, best = _global_argmax(logits, start, group)
            return tokens, log_softmax_at(logits, tokens, start, group, best if group is None else None)
        real = torch.arange(start, start + n_local, device=logits.device) < vocab
        tokens, _ = _global_argmax(logits.masked_fill(~real, float("-inf")), start, group)
        return tokens, log_softmax_at(logits, tokens, start, group)
    scaled = logits / temperature
    if gumbel is None:
        if keys is None:
            keys = row_keys(0, 0, torch.arange(logits.shape[0], device=logits.device))
        gumbel = gumbel_noise(keys, start, n_local)
    perturbed = scaled + gumbel
    if 0 < top_k < vocab or top_p < 1.0 or vocab < n_local * ps.tp:  # else every id is in the support
        perturbed = perturbed.masked_fill(~sampler_support(scaled, ps, top_p, top_k, vocab), float("-inf"))
    tokens, _ = _global_argmax(perturbed, start, group)
    return tokens, log_softmax_at(scaled, tokens, start, group)
