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
MANY_TOKENS = 4096  # ... and any number of rows of a vocabulary this large (48 rounds over [b, V] cost more)
PREFIX = 256  # ... from the largest logits, sorted (more, 8x at a time, when the crossing lies further down)
MARGIN = 16  # ... holding this many past where the float cumsum crosses top_p (the exact verdicts decide)
HOST_LIST = 8192  # ... as Python lists up to this many logits a row (numpy arrays past it)
ONE_PASS_ELEMENTS = 1 << 18  # ... its verdicts a block of rows at a time, [rows, m, V] up to this size (in cache)
WIDE = 1024.0  # a row's logits spanning more than this from the top: the bisection starts at the lowest with mass
SPARSE_NOISE = 8  # the noise of such a vocabulary is drawn for the support alone when it holds < 1/8 of it


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
_GOLDEN = 0x9E3779B97F4A7C15  # the column term's multiplier
_CHUNK_ELEMENTS = 1 << 15  # hashed at a time: the temporaries stay in cache (16 x 152K: 28 -> 17 ms)
_LANES = 64  # the float64 logs run on whole vector lanes (a kernel's scalar tail may round otherwise)


def _unit(z: np.ndarray) -> np.ndarray:
    """The hash's top 53 bits as a float64 in (0, 1)."""
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _uniform_chunks(row_keys: torch.Tensor, first: int, n: int):
    """(column offset, uniforms [b, width] float64, contiguous) over columns [first, first + n), a few
    cache-sized column blocks at a time, each of whole vector lanes but perhaps the last."""
    cols = _COLUMN_HASHES.get((first, n))
    if cols is None:
        cols = np.arange(first, first + n, dtype=np.int64).view(np.uint64) * np.uint64(_GOLDEN)
        _COLUMN_HASHES[first, n] = cols
    keys = _mix_np(row_keys.numpy().view(np.uint64))[:, None]
    width = max(_LANES, _CHUNK_ELEMENTS // max(1, keys.shape[0]) // _LANES * _LANES)
    for lo in range(0, n, width):
        yield lo, _unit(_mix_np(keys + cols[None, lo:lo + width]))


def uniform_noise(row_keys: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """Uniforms in (0, 1) for columns [first, first + n) of rows keyed by row_keys [b] (int64).
    On CPU the same integer arithmetic runs in numpy (bitwise equal; a tenth of the ops' overhead:
    a decoding step of few rows paid ~0.1 ms for the noise as tensor ops)."""
    if row_keys.device.type == "cpu":
        if row_keys.shape[0] * n <= _CHUNK_ELEMENTS:
            return torch.from_numpy(next(_uniform_chunks(row_keys, first, n))[1])
        out = np.empty((row_keys.shape[0], n), dtype=np.float64)
        for lo, u in _uniform_chunks(row_keys, first, n):
            out[:, lo:lo + u.shape[1]] = u
        return torch.from_numpy(out)
    cols = torch.arange(first, first + n, dtype=torch.int64, device=row_keys.device)
    z = _mix(_mix(row_keys)[:, None] + cols[None, :] * _signed(_GOLDEN))
    return (_shr(z, 11).double() + 0.5) / float(1 << 53)


def uniform_noise_at(row_keys: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`uniform_noise`'s numbers at (rows[i], cols[i]) alone, the same bits: [m] for index tensors [m]."""
    if row_keys.device.type == "cpu":
        terms = cols.numpy().astype(np.int64).view(np.uint64) * np.uint64(_GOLDEN)
        return torch.from_numpy(_unit(_mix_np(_mix_np(row_keys.numpy().view(np.uint64))[rows.numpy()] + terms)))
    z = _mix(_mix(row_keys)[rows] + cols.to(torch.int64) * _signed(_GOLDEN))
    return (_shr(z, 11).double() + 0.5) / float(1 << 53)


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    """float32 -log(-log(u)) of float64 u, on a flat buffer of whole vector lanes, so that a number's
    bits do not depend on where it sits (the whole noise or a support's few numbers alone)."""
    pad = -u.numel() % _LANES
    if not pad:  # a contiguous tensor of whole lanes already (no reshapes: the few-row step's noise)
        return (-torch.log(-torch.log(u))).to(torch.float32)
    flat = torch.cat([u.reshape(-1), u.new_full((pad,), 0.5)])
    return (-torch.log(-torch.log(flat)))[:u.numel()].to(torch.float32).view(u.shape)


def gumbel_noise(row_keys: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """float32 Gumbel noise -log(-log(u)) for columns [first, first + n) of rows keyed by row_keys
    (on CPU a large one a column block at a time, in cache: 16 rows of 152K ids 46 -> ~25 ms)."""
    if row_keys.device.type != "cpu" or row_keys.shape[0] * n <= _CHUNK_ELEMENTS:
        return _gumbel(uniform_noise(row_keys, first, n))
    out = torch.empty((row_keys.shape[0], n), dtype=torch.float32)
    for lo, u in _uniform_chunks(row_keys, first, n):
        out[:, lo:lo + u.shape[1]] = _gumbel(torch.from_numpy(u))
    return out


def gumbel_noise_at(row_keys: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`gumbel_noise`'s numbers at (rows[i], cols[i]) alone, the same bits."""
    return _gumbel(uniform_noise_at(row_keys, rows, cols))


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


def _host_prefix(masked: torch.Tensor, hi: torch.Tensor, total: torch.Tensor, top_p: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rows' K largest logits, descending; where their cumulative mass, as a float cumsum
    estimates it, crosses top_p), for the smallest K of 256, 2048, ... that holds every row's crossing
    and a window past it (a real LM's top-p set is a small part of its vocabulary: sorting all of a
    152K vocabulary cost 180 ms for 16 rows). NaN logits sort first (the caller refuses them)."""
    V = masked.shape[-1]
    k = V if V <= 4 * PREFIX else PREFIX  # (a small vocabulary sorts whole: faster than its top-k)
    while True:
        top = masked.topk(k, dim=-1).values if k < V else masked.sort(-1, descending=True).values
        mass = (top - hi[:, None]).exp().cumsum(-1) / total[:, None]
        below = (mass < top_p).sum(-1)  # ~ kept count - 1
        # ... and the crossing's tie group ends inside the prefix (quantised logits, bf16's: a threshold
        # tied with the prefix's last logit may keep ties past it, and the tensor loop would run)
        if k == V or (int(below.max()) + MARGIN < k
                      and bool((top[:, -1] < top.gather(1, below.clamp(max=k - 1)[:, None])[:, 0]).all())):
            return top, below.clamp(max=k - 1)
        # at least 8x, and at least twice what the prefix's mass per logit says the rest needs (the mass
        # per logit only falls further down); near the whole vocabulary a sort costs less than a top-k
        # (a flat distribution, e.g. a freshly initialised model's, keeps most of it)
        k = max(8 * k, int(2 * k * top_p / max(float(mass[:, -1].min()), 1e-12)))
        k = V if k * 8 >= V else k


def _searcher(vals: np.ndarray, side: str):
    """bisect's search on a float32 array, the key as a float32 (a Python float made numpy convert
    the whole array to float64 at every call)."""
    return lambda _, x: np.searchsorted(vals, np.float32(x), side=side)


def _bisection_on_host(masked, probs, total, top_p: float, lo: torch.Tensor, hi: torch.Tensor
                       ) -> Optional[torch.Tensor]:
    """The bisection's final thresholds in one process on CPU (None: another device, many rows of a
    small vocabulary, a NaN, or a crossing not found: the tensor loop then runs). A round's verdict
    depends only on how many logits its midpoint keeps, and monotonically (a float sum of more
    non-negative terms in the same order is not smaller), so one count k* decides every round: those
    keeping >= k* logits reach top_p. k* comes from the loop's own expression (so its rounding, on the
    same [b, V] tensor) evaluated at thresholds around where the sorted cumulative mass crosses top_p,
    searched in step for all rows; the rounds then run on the host, each midpoint in float32 as the
    tensor loop computes it, ending as `_bisection_settled` does. Only the logits above the crossing
    need sorting: a midpoint below the K-th largest keeps >= K > k* logits whatever lies below. The
    tail of a rollout is a few rows decoding alone, where the rounds were a quarter of a small model's
    step; with a real vocabulary the 48 rounds over [b, V] were most of a sampled step."""
    b, V = masked.shape
    if masked.device.type != "cpu" or (b > FEW_ROWS_ON_HOST and V < MANY_TOKENS):  # (measured on CPU)
        return None
    top, below = _host_prefix(masked, hi, total, top_p)
    K = top.shape[-1]

    def reaches(pos: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loop's verdicts at the thresholds top[pos] (pos [b, m]; -1: above every logit, none),
        for the given rows alone (one thread: a row's sum is serial whatever rows come with it)."""
        p_, m_, t_, s_ = (probs, masked, top, total) if rows is None else (probs[rows], masked[rows], top[rows], total[rows])
        thresholds = t_.gather(1, pos.clamp(0, K - 1))
        n = pos.shape[0]
        if torch.get_num_threads() > 1:  # the loop's own [b, V] sums, one parallel op a threshold (a [1, V]
            # sum splits its row among the threads, a [1, m, V] one does not; small ops pay thread syncs)
            kept_mass = torch.stack([(p_ * (m_ >= t[:, None])).sum(-1) for t in thresholds.unbind(1)], 1)
        else:  # every row summed alone, as in the loop's [b, V] sum: all thresholds at once, a block of
            # rows at a time, its temporaries in cache (a [b, V] product per threshold page-faulted)
            step = max(2, ONE_PASS_ELEMENTS // (pos.shape[1] * V))
            if n <= step:
                kept_mass = (p_[:, None, :] * (m_[:, None, :] >= thresholds[:, :, None])).sum(-1)
            else:
                edges = list(range(0, n, step))[:-(-(n - 1) // step)] + [n]  # (no last block of one row)
                kept_mass = torch.cat([(p_[i:j, None, :] * (m_[i:j, None, :] >= thresholds[i:j, :, None])).sum(-1)
                                       for i, j in zip(edges, edges[1:])])
        return (kept_mass / s_[:, None] >= top_p) & (pos >= 0)

    # the first sorted position whose threshold reaches top_p: the cumsum's guess, checked against the
    # next larger logit (the guess's ties included) in one pass; else searched over the prefix in step
    greater = (top > top.gather(1, below[:, None])).sum(-1) - 1  # the last position of a larger logit
    verdicts = reaches(torch.stack([below, greater], dim=1))
    guessed = verdicts[:, 0] & ~verdicts[:, 1]
    first = below
    if not guessed.all():
        # the rows guessed wrong alone in one thread (a flat row's float cumsum may drift: one row of 16
        # searched ~14 passes over all 16); under several threads all rows (a one-row sum would split)
        rows = (~guessed).nonzero()[:, 0] if torch.get_num_threads() == 1 else None
        n = b if rows is None else rows.numel()
        low, high = torch.full((n,), -1), torch.full((n,), K - 1)
        settled = guessed if rows is None else guessed[rows]
        if not (reaches(high[:, None], rows)[:, 0] | settled).all():
            return None  # the prefix's last threshold does not reach top_p: the tensor loop
        while bool((high - low > 1).any()):
            mid = (low + high) // 2
            ok = reaches(mid[:, None], rows)[:, 0]
            high, low = torch.where(ok, mid, high), torch.where(ok, low, mid)
        found = torch.where(settled, below if rows is None else below[rows], high)
        first = found if rows is None else below.index_put((rows,), found)
    thresholds = top.gather(1, first[:, None])[:, 0].tolist()
    # Python floats and bisect: a few us a round, numpy's calls more; but a long prefix (a flat
    # distribution: the whole vocabulary) is searched in place by numpy, not copied out to Python
    ascending = top.flip(-1).tolist() if K <= HOST_LIST else top.flip(-1).numpy()
    los, his = lo.tolist(), hi.tolist()
    out = []
    with np.errstate(over="ignore"):  # logits near float32's max: a midpoint is inf, as the tensor loop's
        for r, vals in enumerate(ascending):
            threshold = _host_rounds(vals, K, V, thresholds[r], los[r], his[r])
            if threshold is None:
                return None
            out.append(threshold)
    return torch.tensor(out, dtype=masked.dtype, device=masked.device)


def _host_rounds(vals, K: int, V: int, threshold: float, lo: float, hi: float) -> Optional[float]:
    """`_bisection_on_host`'s rounds for one row: vals its K largest logits ascending, threshold the
    lowest kept one (None: a NaN, an infinite end, or a threshold that may keep ties past the prefix)."""
    if vals[-1] != vals[-1] or not (math.isfinite(lo) and math.isfinite(hi)):
        return None  # NaN logits: leave them to the tensor loop
    search_left, search_right = ((bisect.bisect_left, bisect.bisect_right) if K <= HOST_LIST else
                                 (_searcher(vals, "left"), _searcher(vals, "right")))

    def kept(t: float) -> int:  # K for any threshold at or below the prefix's last logit: >= k*
        return K - int(search_left(vals, t))

    need = kept(threshold)
    if need >= K and K < V:
        return None  # the prefix may not hold every logit the threshold keeps
    f32 = np.float32
    a, b_ = f32(lo), f32(hi)
    for _ in range(BISECTION_STEPS):
        mid = (a + b_) / f32(2)
        if kept(float(mid)) >= need:
            a = mid
        else:
            b_ = mid
        between = int(search_right(vals, float(a)))
        if between == K or vals[between] >= float(b_):  # settled (see _bisection_settled)
            if kept(float(b_)) >= need:
                if np.nextafter(a, b_) == b_:
                    continue  # neighbouring floats: a midpoint rounds to an end; bisect on
                a = b_
            break
    return float(a)


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
        # a masked logit (-inf, a dtype's min, -1e9; or -inf kept by a top-k wider than the finite logits)
        # has no mass and must not start the bisection: from -inf every midpoint is -inf, from -3e38 48
        # halvings stop 1e24 short; either way top-p kept every id. Far below the largest logit (exp
        # underflows past -104), the bisection starts at the lowest logit with mass instead (decided on
        # the reduced lo: the same on every rank, and the same as one process)
        wide = lo < gmax - WIDE
        if torch.compiler.is_compiling() or bool(wide.any()):
            with_mass = masked.masked_fill(probs == 0, float("inf")).min(dim=-1).values
            lo = torch.where(wide, all_reduce_values(with_mass, group, dist.ReduceOp.MIN), lo)
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
    if gumbel is None and keys is None:
        keys = row_keys(0, 0, torch.arange(logits.shape[0], device=logits.device))
    support = None
    if 0 < top_k < vocab or top_p < 1.0 or vocab < n_local * ps.tp:  # else every id is in the support
        support = sampler_support(scaled, ps, top_p, top_k, vocab)
    if (gumbel is None and support is not None and n_local >= MANY_TOKENS
            and int(support.sum()) * SPARSE_NOISE < support.numel()):
        # noise for the support alone (the same numbers): a top-p set is a few hundred of a real
        # vocabulary's 150K ids, and hashing every id was most of a sampled step
        rows, cols = support.nonzero(as_tuple=True)
        perturbed = torch.full_like(scaled, float("-inf"))
        perturbed[rows, cols] = scaled[rows, cols] + gumbel_noise_at(keys, rows, cols + start)
    else:
        perturbed = scaled + (gumbel_noise(keys, start, n_local) if gumbel is None else gumbel)
        if support is not None:
            perturbed = perturbed.masked_fill(~support, float("-inf"))
    tokens, _ = _global_argmax(perturbed, start, group)
    return tokens, log_softmax_at(scaled, tokens, start, group)
