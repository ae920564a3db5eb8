"""Batch-invariant kernels: each token's result is bitwise the same whatever else is in the batch.

`rl.exact_rollouts` runs the sampler (prefill and decode over the paged cache) and the trainer
(old log-probs and the update's forward) through these paths, so a sampled token's log-prob is
bitwise the trainer's. Measured on this CPU (torch 2.13, tests/test_exact_rollouts.py):
- fp32 GEMMs are not row-invariant (row 0 of x[:M] @ W changes between M = 1 and M >= 2, and
  again at other M); with M padded to a multiple of ROW_TILE (16) every row's result is the same
  for any M and any position, single-threaded, for F.linear, bmm and grouped_mm alike (with two
  threads, for M <= 128). bf16 GEMMs change with M even at multiples of 16 (K 512, M 48 vs 16);
  calls of one fixed shape (FIXED_ROWS rows; EXPERT_ROWS per expert GEMM) are invariant, whatever
  the row's place in them. Only forwards are cut so: gradients need no invariance and take one GEMM.
- Sums over TP ranks: see parallel/comm.py's sum_in_rank_order (more than two ranks).
- exp, log, cos, sin agree between torch's vector body and its scalar tail; sigmoid and silu do
  not (fp32), so `sigmoid`/`silu` here are written with exp.
- Attention: one formulation for every path, MLA's absorbed form (queries and the output projection
  absorbed into the latent), over keys laid out per document at their absolute positions, cut into
  KEY_BLOCK-sized blocks merged by online softmax in block order. Blocks after a query's own
  position are fully masked, and merging one is an exact no-op, so a query sees the same arithmetic
  whether it is one of a packed training row's, a prompt's or a single decoding step's.

The mode is a context variable (`exact_mode`), like the kernels backend: it holds for the code
run inside the block and nowhere else.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ROW_TILE = 16  # GEMM rows are padded to a multiple of this
FP32_ROWS = 128  # float32 linears: at most this many rows per call (transposed weights change beyond)
ROW_MAJOR_ROWS = 2048  # ... with a row-major weight (measured invariant up to here)
BF16_WIDE_K = 256  # bf16 linears with K up to this: calls of up to ROW_MAJOR_ROWS rows
FIXED_ROWS = 64  # bf16/fp16 linears: every call exactly this many rows
EXPERT_ROWS = 32  # bf16/fp16 expert GEMMs: every expert's GEMM exactly this many rows
KEY_BLOCK = 32  # keys per attention block, aligned to positions 0, 32, 64, ... of a document
QUERY_CHUNK = 64  # query positions per recomputed chunk in training (activation memory O(chunk x keys))
SCORE_BUDGET = 1 << 20  # score elements of one attention call kept for backward without recompute

_EXACT: contextvars.ContextVar = contextvars.ContextVar("r1mega_exact", default=False)
# the intra-op thread count the mode started at (0: off): fp32 GEMMs take other kernels at another
# count (and these paths other call shapes), so the rollout and the update must both run at it
_THREADS: contextvars.ContextVar = contextvars.ContextVar("r1mega_exact_threads", default=0)


def enabled() -> bool:
    if torch.compiler.is_compiling():  # only the compiled decoding step traces, never in this mode
        return False  # (inference/compiled_decode.py refuses it first; a ContextVar breaks a graph)
    return _EXACT.get()


@contextlib.contextmanager
def exact_mode(on: bool = True):
    """Within the block, linears, expert GEMMs, activations, attention and log-probs take the
    batch-invariant paths (when `on`)."""
    token = _EXACT.set(bool(on))
    # an inner block (activation recompute) keeps the outer block's count
    threads = _THREADS.set((_THREADS.get() or torch.get_num_threads()) if on else 0)
    try:
        yield
    finally:
        _THREADS.reset(threads)
        _EXACT.reset(token)


def hold_threads(phase: str) -> None:
    """On entering a phase (the rollout, the old log-probs, an update): if the intra-op thread count
    is not the one the mode started at, set it back, with a warning naming both counts. A count
    changed between the sampler and the trainer would change the bits of fp32 GEMMs (another kernel)
    and so the log-probs; setting it back keeps the gap 0 and the user's own setting."""
    want = _THREADS.get()
    now = torch.get_num_threads()
    if want and _EXACT.get() and now != want:
        warnings.warn(f"rl.exact_rollouts: the intra-op thread count changed from {want} to {now} before the "
                      f"{phase}; set back to {want} (the rollout and the update must run at one count for "
                      "their log-probs to be bitwise equal)", RuntimeWarning, stacklevel=2)
        torch.set_num_threads(want)


def _pad_rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    m = x.shape[dim]
    pad = (-m) % ROW_TILE
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim)
    return x, m


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with every row's result independent of how many rows come with it and where it sits:
    rows padded to a multiple of a tile, in calls of at most a cap of rows (`_row_tiles`, measured per
    dtype, weight layout and thread count). Only the forward needs that: backward is one GEMM per
    gradient."""
    flat = x.reshape(-1, x.shape[-1])
    m = flat.shape[0]
    tile, cap = _row_tiles(flat, weight)
    if m <= cap:  # one call: pad, GEMM, cut, through autograd's own ops
        pad = (-m) % tile
        out = F.linear(F.pad(flat, (0, 0, 0, pad)) if pad else flat, weight, bias)
        out = out[:m] if pad else out
    elif torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad):
        out = _InvariantLinear.apply(flat, weight, bias)
    else:
        out = _linear_rows(flat, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def _row_tiles(flat: torch.Tensor, weight: torch.Tensor) -> tuple[int, int]:
    """(tile, cap): a call's rows are padded to a multiple of `tile` and number at most `cap`. Measured
    on this CPU at one intra-op thread (tests/test_exact_rollouts.py::test_linear_rows_one_call):
    - float32: any multiple of 16 rows gives each row the same bits up to 2,048 rows (K 16..2048,
      N 32..8192) with a row-major [out, in] weight, as nn.Linear keeps it; a transposed weight's
      kernels change from 192 rows at K >= 1024, so 128 there;
    - bfloat16: with a row-major weight and K <= 256 any multiple of 64 rows up to 2,048; otherwise
      the kernels change with M even at multiples of 16 (K 512: from 512 rows; K 4096: from 192).
    Anything else (several threads, where fp32 kernels change with M too; other dtypes): calls of
    exactly FIXED_ROWS."""
    if torch.get_num_threads() == 1:
        if flat.dtype == torch.float32:
            return ROW_TILE, ROW_MAJOR_ROWS if weight.is_contiguous() else FP32_ROWS
        if flat.dtype == torch.bfloat16 and weight.is_contiguous() and flat.shape[1] <= BF16_WIDE_K:
            return FIXED_ROWS, ROW_MAJOR_ROWS
    return FIXED_ROWS, FIXED_ROWS


def _linear_rows(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    m = flat.shape[0]
    step = _row_tiles(flat, weight)[1]
    flat = F.pad(flat, (0, 0, 0, (-m) % step)) if m % step else flat
    return torch.cat([F.linear(c, weight, bias) for c in flat.split(step)])[:m]


class _InvariantLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear_rows(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        d_x = grad @ weight if ctx.needs_input_grad[0] else None
        d_w = grad.t() @ x if ctx.needs_input_grad[1] else None
        d_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_x, d_w, d_b


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [n, M, K] @ b [n, K, N] with each element independent of M, n and the row's place. N is
    padded to a multiple of ROW_TILE too: on an AVX-512 CPU (AMD EPYC, torch 2.13) a 9-column product
    (attention's rank-8 latents plus the softmax denominator) gave a row other bits at other places
    in the same call; every multiple of 16 columns measured the same at every place."""
    a, m = _pad_rows(a, 1)
    n_cols = b.shape[-1]
    if n_cols % ROW_TILE:
        b = torch.cat([b, b.new_zeros(*b.shape[:-1], (-n_cols) % ROW_TILE)], -1)
    return torch.bmm(a, b)[:, :m, :n_cols]


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, grouped) -> torch.Tensor:
    """`grouped(rows, weight, offsets)` (the backend's grouped GEMM) with each row's result independent
    of the other rows. float32: each expert's group padded to a multiple of ROW_TILE rows, one call.
    Other dtypes (bf16 kernels change with a group's size): each group cut into chunks of exactly
    EXPERT_ROWS rows, run in rounds (round r: every expert's r-th chunk, so each GEMM has that one
    shape and the weights are read in place). Reads the group sizes on the host, as the loop does."""
    n, k_in = rows.shape
    # several intra-op threads: fp32 GEMMs change with M at multiples of 16 too, so rounds as bf16
    tiled = rows.dtype == torch.float32 and torch.get_num_threads() == 1
    tile = ROW_TILE if tiled else EXPERT_ROWS
    ends = offsets.long().cpu()
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    chunks = (counts + tile - 1) // tile  # per expert
    first_chunk = chunks.cumsum(0) - chunks
    i = torch.arange(n)
    expert = torch.searchsorted(ends, i, right=True)
    dest = (i - (ends - counts)[expert] + tile * first_chunk[expert]).to(rows.device)
    total = int(chunks.sum())
    buf = rows.new_zeros(total * tile, k_in).index_copy(0, dest, rows)
    if tiled:
        out = grouped(buf, weight, (tile * chunks.cumsum(0)).to(torch.int32).to(offsets.device))
        return out.index_select(0, dest)
    padded_offsets = (tile * chunks.cumsum(0)).to(torch.int32).to(offsets.device)
    return _GroupedRounds.apply(buf, weight, padded_offsets, chunks, first_chunk, grouped).index_select(0, dest)


class _GroupedRounds(torch.autograd.Function):
    """Forward: expert GEMMs of exactly EXPERT_ROWS rows, in rounds (round r: every expert's r-th chunk).
    Backward needs no invariance: one grouped GEMM over the padded groups, through its own autograd."""

    @staticmethod
    def forward(ctx, buf, weight, padded_offsets, chunks, first_chunk, grouped):
        ctx.save_for_backward(buf, weight, padded_offsets)
        ctx.grouped = grouped
        total, tile, k_in = int(chunks.sum()), EXPERT_ROWS, buf.shape[1]
        per_chunk = buf.view(total, tile, k_in)
        out = buf.new_zeros(total, tile, weight.shape[1])
        for r in range(int(chunks.max()) if total else 0):
            has = chunks > r
            ids = (first_chunk + r)[has].to(buf.device)
            offs = (tile * has.long()).cumsum(0).to(torch.int32).to(padded_offsets.device)
            out.index_copy_(0, ids, grouped(per_chunk.index_select(0, ids).view(-1, k_in), weight, offs).view(
                -1, tile, weight.shape[1]))
        return out.view(total * tile, weight.shape[1])

    @staticmethod
    def backward(ctx, grad):
        buf, weight, padded_offsets = ctx.saved_tensors
        with torch.enable_grad():
            b = buf.detach().requires_grad_(ctx.needs_input_grad[0])
            w = weight.detach().requires_grad_(ctx.needs_input_grad[1])
            y = ctx.grouped(b, w, padded_offsets)
            wanted = [t for t in (b, w) if t.requires_grad]
            got = iter(torch.autograd.grad(y, wanted, grad)) if wanted else iter(())
        return (next(got) if b.requires_grad else None, next(got) if w.requires_grad else None,
                None, None, None, None)


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """x.sum(-1) (the softmax denominator over the vocabulary), each row's bits independent of how many
    rows come with it. Under several intra-op threads torch sums a lone row longer than its grain
    (32,768 values) in two passes split across the threads, but two or more rows each in one pass:
    a decoding step with one row left gave another z than the trainer's (gap 9.5e-7, vocab 65,536).
    So in the mode a lone row is summed beside a copy of itself."""
    if enabled() and x.dim() and 0 < x.shape[-1] == x.numel() and torch.get_num_threads() > 1:
        return x.reshape(1, -1).repeat(2, 1).sum(-1)[:1].view(x.shape[:-1])
    return x.sum(-1)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (exp(-x) + 1) in float32 (torch's fp32 sigmoid rounds differently in its scalar tail)."""
    return torch.reciprocal(torch.exp(-x.float()) + 1)


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) as h + h * tanh(h), h = x / 2, in float32: three ops, each giving a value the same
    bits wherever it sits (tanh, like exp, has no scalar tail of its own; test_activations_position_free)."""
    h = x.float() * 0.5
    return torch.addcmul(h, h, torch.tanh(h)).to(x.dtype)


# ---- attention -------------------------------------------------------------------------------------

class DocumentLayout:
    """Where each token of [s, b] activations sits when every document gets its own row, starting at
    column 0 (its absolute positions): `index` [s * b] flat slot in [docs, width]. Built once per
    forward from document ids [b, s] (runs of equal ids; a packed row's documents, a pad's own id)."""

    def __init__(self, docs: torch.Tensor):
        b, s = docs.shape
        d = docs.t()  # [s, b], the activations' order
        start = torch.ones_like(d, dtype=torch.bool)
        start[1:] = d[1:] != d[:-1]
        col = torch.arange(s, device=docs.device)[:, None].expand(s, b)
        first = torch.where(start, col, torch.zeros_like(col)).cummax(0).values
        pos = col - first
        # document number: runs counted row by row ([b, s] order), then mapped back to [s, b]
        run = start.t().reshape(-1).long().cumsum(0).view(b, s).t() - 1
        self.docs = int(run.max()) + 1
        self.width = int(pos.max()) + 1
        self.index = (run * self.width + pos).reshape(-1)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """x [s * b, *f] -> [docs, width, *f] (unused slots zero)."""
        out = x.new_zeros(self.docs * self.width, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.docs, self.width, *x.shape[1:])

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """y [docs, width, *f] -> [s * b, *f]."""
        return y.reshape(self.docs * self.width, *y.shape[2:]).index_select(0, self.index)


def latent_attention(q: torch.Tensor, keys: torch.Tensor, q_pos: Optional[torch.Tensor], scale: float,
                     rank: int) -> torch.Tensor:
    """q [n, t, h, d] absorbed queries (float32) of n documents; keys [n, L, d] the documents'
    [latent | rope key] at positions 0..L-1 -> [n, t, h, rank]: softmax over keys at positions <= the
    query's of (q . k) * scale, times the latents. q_pos [n, t]: the queries' positions (decoding), or
    None: query j is at position j (a DocumentLayout's rows; key blocks past a chunk's last query are
    then skipped, which is exact). Recomputed per query chunk in backward when grad is on."""
    n, t, h, d = q.shape
    L = keys.shape[1]
    keys = torch.cat([keys, keys.new_zeros(n, (-L) % KEY_BLOCK, d)], 1) if L % KEY_BLOCK else keys
    ones = keys.new_ones(n, keys.shape[1], 1)
    values = torch.cat([keys[..., :rank], ones], -1)  # the ones column accumulates the softmax denominator
    # with grad, long documents go by recomputed query chunks (memory O(chunk x keys)); scores that fit
    # SCORE_BUDGET are kept whole (recompute costs more than it saves there). Chunking is exact.
    chunked = torch.is_grad_enabled() and n * h * t * keys.shape[1] > SCORE_BUDGET
    chunk = QUERY_CHUNK if chunked else t
    outs = []
    for lo in range(0, t, chunk):
        hi = min(t, lo + chunk)
        if q_pos is None:
            pos = torch.arange(lo, hi, device=q.device).expand(n, -1)
            width = min(-(-hi // KEY_BLOCK) * KEY_BLOCK, keys.shape[1])
        else:
            pos, width = q_pos[:, lo:hi], keys.shape[1]
        args = (q[:, lo:hi], keys[:, :width], values[:, :width], pos)
        if chunked:
            outs.append(checkpoint(_attend_chunk, *args, scale, rank, use_reentrant=False))
        else:
            outs.append(_attend_chunk(*args, scale, rank))
    return torch.cat(outs, 1)


def _attend_chunk(q, keys, values, q_pos, scale: float, rank: int) -> torch.Tensor:
    n, t, h, d = q.shape
    rows = q.permute(0, 2, 1, 3).reshape(n, h * t, d)  # [n, h*t, d] (heads outer)
    pos = q_pos[:, None, :].expand(n, h, t).reshape(n, h * t, 1)
    m = rows.new_full((n, h * t), float("-inf"))
    acc = rows.new_zeros(n, h * t, rank + 1)
    for lo in range(0, keys.shape[1], KEY_BLOCK):
        kb = keys[:, lo:lo + KEY_BLOCK].contiguous()
        s = bmm(rows, kb.transpose(1, 2)) * scale
        allowed = torch.arange(lo, lo + KEY_BLOCK, device=q.device)[None, None, :] <= pos
        s = s.masked_fill(~allowed, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1))
        p = torch.exp(s - m_new[..., None])
        acc = acc * torch.exp(m - m_new)[..., None] + bmm(p, values[:, lo:lo + KEY_BLOCK].contiguous())
        m = m_new
    ctx = acc[..., :rank] / acc[..., rank:]
    return ctx.view(n, h, t, rank).permute(0, 2, 1, 3)


def decode_layout(valid: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoding step's cache read, valid [b, L] (each row's tokens the last `total` slots): the
    columns to read so that each row's tokens start at column 0 [b, L], and the positions of its s
    new queries [b, s]."""
    b, L = valid.shape
    total = valid.sum(1)
    j = torch.arange(L, device=valid.device)[None, :]
    cols = (L - total)[:, None] + j
    q_pos = total[:, None] - s + torch.arange(s, device=valid.device)[None, :]
    return cols.clamp(max=L - 1), q_pos
