"""Context parallelism: every sequence split over the cp ranks, attention over the whole of it.

The sequence is cut into 2*cp equal chunks and cp rank r holds chunks r and 2*cp-1-r (zigzag),
so under the causal mask every rank does the same attention work. Every stage receives the whole
batch (ids, labels, positions, document ids) and keeps its rank's tokens; RoPE uses their global
positions. MLA's keys and values are all recomputable from the per-token latent [c_kv | k_rope]
(kv_lora_rank + qk_rope_head_dim values: 576 at V3 size, ~71x less than per-head K/V), so that
latent is all-gathered over cp (reduce-scattered in backward) and each rank's query chunks attend
the gathered keys blockwise (block_attention: online log-sum-exp, no s x s tensor). The dense
students gather their rotated per-KV-head keys and values instead (2 x kv_heads x head_dim per
token; under TP each rank gathers only the KV heads its query heads read).

Both families call the same three steps: `keep_local_tokens` at the top of the stage's forward,
`gather_sequence` on what their keys are made of, `attend_local_chunks` for the core attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.kernels.block_attention import block_attention
from r1mega.parallel.comm import gather_seq
from r1mega.parallel.layout import ParallelState


def zigzag_chunks(s: int, cp: int, rank: int) -> list[tuple[int, int]]:
    """The (start, end) global token ranges cp rank `rank` holds, in its local order."""
    if s % (2 * cp):
        raise ValueError(f"context parallel: sequence length {s} is not divisible by 2 x cp = {2 * cp}")
    c = s // (2 * cp)
    return [(rank * c, (rank + 1) * c), ((2 * cp - 1 - rank) * c, (2 * cp - rank) * c)]


def zigzag_index(s: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Global indices of this rank's tokens [s / cp]."""
    return torch.cat([torch.arange(a, b, device=device) for a, b in zigzag_chunks(s, cp, rank)])


def global_order(s: int, cp: int, device=None) -> torch.Tensor:
    """Permutation taking the rank-ordered concatenation of every rank's tokens to global order."""
    held = torch.cat([zigzag_index(s, cp, r, device) for r in range(cp)])
    return torch.argsort(held)


@dataclass
class ContextParallelAttention:
    """What a layer's attention needs under CP: document ids of all tokens (None: one document
    per row) and of this rank's queries, and where its query chunks sit in the sequence."""

    seq_len: int
    chunks: list[tuple[int, int]]
    docs: Optional[torch.Tensor] = None  # [b, s]
    docs_local: Optional[torch.Tensor] = None  # [b, s / cp]


@dataclass
class LocalTokens:
    """A stage's inputs cut to this cp rank's tokens (local order); `index` their global indices."""

    input_ids: torch.Tensor  # [b, s / cp]
    labels: Optional[torch.Tensor]
    attn_mask: ContextParallelAttention
    position_ids: torch.Tensor  # [b, s / cp] global (or per-document) positions for RoPE
    index: torch.Tensor  # [s / cp]


def keep_local_tokens(input_ids: torch.Tensor, labels: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor],
                      position_ids: Optional[torch.Tensor], ps: ParallelState) -> LocalTokens:
    """Whole rows [b, s] (every stage gets them) -> this rank's zigzag chunks. attn_mask: None
    (causal) or document ids [b, s]; a dense [b, 1, s, s] mask is refused (it would be O(s^2))."""
    b, s = input_ids.shape
    local = zigzag_index(s, ps.cp, ps.r("cp"), input_ids.device)
    if attn_mask is not None and attn_mask.dim() != 2:
        raise ValueError("context parallel: the attention mask must be document ids [b, s], "
                         f"got shape {list(attn_mask.shape)}")
    mask = ContextParallelAttention(s, zigzag_chunks(s, ps.cp, ps.r("cp")), attn_mask,
                                    None if attn_mask is None else attn_mask[:, local])
    positions = local[None].expand(b, -1) if position_ids is None else position_ids[:, local]
    return LocalTokens(input_ids[:, local], None if labels is None else labels[:, local], mask, positions, local)


def attend_local_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        mask: ContextParallelAttention) -> torch.Tensor:
    """q [b, h, s / cp, d] this rank's queries (local order), k/v [b, h, s, d*] the whole sequence
    (global order) -> [b, h, s / cp, dv]: each zigzag chunk attends the keys causally up to its
    own position, within its documents."""
    outs, at = [], 0
    for start, end in mask.chunks:
        n = end - start
        docs_q = None if mask.docs is None else mask.docs_local[:, at:at + n]
        outs.append(block_attention(q[:, :, at:at + n], k, v, scale, docs_q, mask.docs, q_start=start)[0])
        at += n
    return torch.cat(outs, dim=2)


def gather_sequence(x: torch.Tensor, ps: ParallelState, seq_len: int) -> torch.Tensor:
    """x [s / cp, ...] this rank's tokens -> [s, ...] the whole sequence in global order; the
    backward sums every rank's gradient into the owner's tokens (reduce-scatter)."""
    full = gather_seq(x.contiguous(), ps.g("cp"))
    return full.index_select(0, global_order(seq_len, ps.cp, x.device))


class _GatherTokens(torch.autograd.Function):
    """[b, s/cp] per-token values -> [b, s] in global order on every cp rank. Each rank then
    computes the same whole-sequence loss, so backward hands each rank its own tokens' gradient."""

    @staticmethod
    def forward(ctx, t, ps, seq_len):
        ctx.ps, ctx.seq_len = ps, seq_len
        parts = [torch.empty_like(t) for _ in range(ps.cp)]
        dist.all_gather(parts, t.contiguous(), group=ps.g("cp"))
        full = torch.cat(parts, dim=1)
        return full.index_select(1, global_order(seq_len, ps.cp, t.device))

    @staticmethod
    def backward(ctx, grad):
        idx = zigzag_index(ctx.seq_len, ctx.ps.cp, ctx.ps.r("cp"), grad.device)
        return grad.index_select(1, idx), None, None


def gather_tokens(t: torch.Tensor, ps: ParallelState, seq_len: int) -> torch.Tensor:
    """This rank's per-token values [b, s / cp] -> the whole rows [b, s] (identity when cp = 1)."""
    return t if ps.cp == 1 else _GatherTokens.apply(t, ps, seq_len)


def local_tokens(t: Optional[torch.Tensor], ps: ParallelState, dim: int = 1) -> Optional[torch.Tensor]:
    """Whole rows -> this cp rank's tokens along `dim` (identity when cp = 1)."""
    if t is None or ps.cp == 1:
        return t
    return t.index_select(dim, zigzag_index(t.shape[dim], ps.cp, ps.r("cp"), t.device))
