"""Rollout sequences as next-token training rows, padded or packed.

Padded (`to_train_batch`): the generation's own left-padded layout, one sequence per row, every row
as long as the longest sequence of the rollout.

Packed (`pack_batch`): each sequence's real tokens only (prompt from its first real token to the
completion's last), placed whole into rows of a token budget by first-fit decreasing; every
sequence of a row is its own document (the block attention never lets one see another), its
position ids restart at 0, and the recorded routing of each token is moved to its packed slot.
Unused slots at a row's end are one-token documents outside the loss. Rows are right-padded to
`multiple` (context parallelism splits them evenly).

Both carry `seq` [R, S]: each token's sequence (its row in the rollout; -1 for pad slots), so the loss can normalise and mask per sequence wherever the sequence sits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from r1mega.config import Config
from r1mega.inference.generate import Rollout
from r1mega.kernels.block_attention import documents_from_pad
from r1mega.models.stage import IGNORE_INDEX
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import Microbatch


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [R, S]
    targets: torch.Tensor  # [R, S]
    mask: torch.Tensor  # [R, S] completion tokens that take part in the loss
    position_ids: torch.Tensor  # [R, S]
    attn_mask: torch.Tensor  # [R, S] document ids
    rollout_logp: torch.Tensor  # [R, S] the sampler's log-probs
    routing: Optional[dict]  # {layer: experts [S, R, k]} recorded while sampling
    seq: Optional[torch.Tensor] = None  # [R, S] each token's sequence, its row in the rollout (-1: none)
    generated: Optional[torch.Tensor] = None  # [R, S] every sampled token (kept in the loss or not)
    sequences: int = 0  # how many sequences the rows hold
    support: Optional[list] = None  # per microbatch: the sampler's support (rl.keep_sampling_mask)
    # [R, S] the tokens of the sequences the loss trains on: what the routing-bias update counts as expert
    # load, the same tokens whether rows are padded or packed (the padded rows also hold unkept sequences)
    counted: Optional[torch.Tensor] = None

    def rows(self, index: torch.Tensor) -> "TrainBatch":
        routing = {k: v[:, index] for k, v in self.routing.items()} if self.routing else None
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return TrainBatch(self.input_ids[index], self.targets[index], self.mask[index], self.position_ids[index],
                          self.attn_mask[index], self.rollout_logp[index], routing, pick(self.seq),
                          pick(self.generated), len(index), counted=pick(self.counted))

    @property
    def slots(self) -> int:
        return self.input_ids.numel()

    @property
    def labels(self) -> torch.Tensor:
        """The trained tokens as a trainer's labels [R, S] (IGNORE_INDEX elsewhere)."""
        return torch.where(self.mask.bool(), self.targets, torch.full_like(self.targets, IGNORE_INDEX))


def _right_pad(batch: TrainBatch, extra: int) -> TrainBatch:
    """`extra` more columns per row, each its own one-token document outside the loss."""
    if not extra:
        return batch
    R, n = batch.input_ids.shape
    dev = batch.input_ids.device
    right = lambda t, fill: None if t is None else torch.cat([t, t.new_full((R, extra), fill)], 1)  # noqa: E731
    tail = torch.arange(n, n + extra, device=dev)
    return TrainBatch(right(batch.input_ids, 0), right(batch.targets, 0), right(batch.mask, False),
                      torch.cat([batch.position_ids, batch.position_ids[:, -1:] + 1 + tail - n], 1),
                      torch.cat([batch.attn_mask, (-1 - tail).expand(R, -1)], 1), right(batch.rollout_logp, 0.0),
                      None if batch.routing is None else {
                          k: torch.cat([v, torch.arange(v.shape[-1], device=dev, dtype=v.dtype).expand(extra, R, -1)])
                          for k, v in batch.routing.items()},
                      right(batch.seq, -1), right(batch.generated, False), batch.sequences,
                      counted=right(batch.counted, False))


def to_train_batch(r: Rollout, keep: torch.Tensor, multiple: int = 1) -> TrainBatch:
    """keep [B]: sequences that take part in the loss. multiple: rows are right-padded to a
    multiple of it (context parallelism splits them evenly); each pad is its own document, untrained."""
    ids, n = r.tokens, r.tokens.shape[1] - 1
    docs = documents_from_pad(r.pad, n)
    B = ids.shape[0]
    first, end = sequence_spans(r)
    cols = torch.arange(n, device=ids.device)[None, :]
    inside = (cols >= first[:, None]) & (cols < end[:, None])  # columns after the last sample hold no token
    seq = torch.where(inside, torch.arange(B, device=ids.device)[:, None], torch.full_like(docs, -1))
    batch = TrainBatch(ids[:, :-1], ids[:, 1:], r.completion_mask[:, 1:] & keep[:, None], r.position_ids[:, :-1],
                       docs, r.logprobs[:, 1:], {k: v[:n] for k, v in r.routing.items()} or None, seq,
                       r.completion_mask[:, 1:].clone(), B, counted=inside & keep[:, None])
    return _right_pad(batch, (-n) % multiple)


def sequence_spans(r: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, end) [B]: the training columns of each sequence in the padded layout, from its first
    real prompt token to the input before its last sampled token (end exclusive)."""
    n = r.tokens.shape[1]
    cols = torch.arange(n, device=r.tokens.device)
    last = torch.where(r.completion_mask, cols, torch.full_like(cols, -1)).max(1).values
    end = torch.where(last >= 0, last, torch.full_like(last, n - 1))  # no sample: the prompt, untrained
    return r.pad, torch.maximum(end, r.pad + 1)


def first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of sequences grouped into rows of at most `budget` tokens (longer ones alone)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(budget - lengths[i])
    return [sorted(r) for r in rows]


def pack_batch(r: Rollout, keep: torch.Tensor, index: torch.Tensor, budget: int = 0, multiple: int = 1,
               min_rows: int = 0, drop_unkept: bool = True) -> TrainBatch:
    """The rollout's sequences `index` (rows of `r`) packed into
    rows of `budget` tokens (0 or less than the longest sequence: the longest sequence). Sequences
    with keep False are left out (they take no part in the loss) when drop_unkept. min_rows: empty
    rows added up to it (every rank of an expert-parallel group must run as many microbatches)."""
    r = rows_of(r, index)  # this minibatch's sequences only; seq ids name their rows of the whole rollout
    keep, index = keep[index], index.tolist()
    padded = to_train_batch(r, keep)
    first, end = sequence_spans(r)
    chosen = [j for j in range(len(index)) if keep[j] or not drop_unkept]
    lengths = [int(end[j] - first[j]) for j in chosen]
    budget = max([budget] + lengths + [1])
    rows = [[chosen[j] for j in row] for row in first_fit_decreasing(lengths, budget)] if chosen else []
    used = max([sum(int(end[j] - first[j]) for j in row) for row in rows] + [1])
    S = used + (-used) % multiple
    R = max(len(rows), min_rows, 1)
    dev = r.tokens.device
    src_row = torch.full((R, S), -1, dtype=torch.long)
    src_col = torch.zeros((R, S), dtype=torch.long)
    seq = torch.full((R, S), -1, dtype=torch.long)
    docs = -1 - torch.arange(S).expand(R, S).clone()  # unused slots: one-token documents
    pos = torch.zeros((R, S), dtype=torch.long)
    for ri, row in enumerate(rows):
        at = 0
        for doc, j in enumerate(row):
            lo, hi = int(first[j]), int(end[j])
            n = hi - lo
            src_row[ri, at:at + n] = j
            src_col[ri, at:at + n] = torch.arange(lo, hi)
            seq[ri, at:at + n] = index[j]
            docs[ri, at:at + n] = doc
            pos[ri, at:at + n] = torch.arange(n)
            at += n
    src_row, src_col, seq, docs, pos = (t.to(dev) for t in (src_row, src_col, seq, docs, pos))
    used_slot = src_row >= 0
    b_idx, c_idx = src_row.clamp(min=0), src_col

    def take(t: torch.Tensor, fill) -> torch.Tensor:
        return torch.where(used_slot, t[b_idx, c_idx], torch.full_like(t[b_idx, c_idx], fill))

    routing = None
    if padded.routing:
        routing = {}
        for layer, v in padded.routing.items():  # [n, B, k] -> [S, R, k]
            moved = v[c_idx, b_idx]  # [R, S, k]
            dummy = torch.arange(v.shape[-1], device=dev, dtype=moved.dtype).expand_as(moved)  # the record's type
            routing[layer] = torch.where(used_slot[..., None], moved, dummy).transpose(0, 1).contiguous()
    return TrainBatch(take(padded.input_ids, 0), take(padded.targets, 0), take(padded.mask, False), pos, docs,
                      take(padded.rollout_logp, 0.0), routing, seq, take(padded.generated, False), len(index),
                      counted=take(padded.counted, False))


def rows_of(r: Rollout, index: torch.Tensor) -> Rollout:
    """The rollout's rows `index` (same columns)."""
    return replace(r, tokens=r.tokens[index], pad=r.pad[index], completion_mask=r.completion_mask[index],
                   logprobs=r.logprobs[index], routing={k: v[:, index] for k, v in r.routing.items()})


def merge_rollouts(parts: list[tuple[Rollout, torch.Tensor]]) -> Rollout:
    """Rows `index` of several rollouts as one left-padded rollout (dynamic sampling draws more than
    once): prompts left-padded to the longest prompt, completions right-padded to the longest."""
    P = max(r.prompt_len for r, _ in parts)
    N = max(r.tokens.shape[1] - r.prompt_len for r, _ in parts)
    toks, pads, masks, lps, routes = [], [], [], [], []
    for r, idx in parts:
        left, right = P - r.prompt_len, N - (r.tokens.shape[1] - r.prompt_len)
        grow = lambda t, fill: torch.cat([t.new_full((len(idx), left), fill), t[idx],  # noqa: E731
                                          t.new_full((len(idx), right), fill)], 1)
        toks.append(grow(r.tokens, 0))  # pads are one-token documents outside the loss: any id serves
        pads.append(r.pad[idx] + left)
        masks.append(grow(r.completion_mask, False))
        lps.append(grow(r.logprobs, 0.0))
        routes.append(r.routing)
    routing = {}
    for layer in routes[0]:
        cols = []
        for (r, idx), rt in zip(parts, routes):
            v = rt[layer][:, idx]
            k = v.shape[-1]
            left, right = P - r.prompt_len, N - (r.tokens.shape[1] - r.prompt_len)
            dummy = lambda n: torch.arange(k, device=v.device, dtype=v.dtype).expand(n, v.shape[1], k)  # noqa: E731
            # the recorded routing may stop before the last sampled token (it needs no forward)
            short = r.tokens.shape[1] - v.shape[0]
            cols.append(torch.cat([dummy(left), v, dummy(right + short)]))
        routing[layer] = torch.cat(cols, 1)
    # the cache numbers of the draws: they ran one after another (peak: the largest; work: the sum)
    rollouts = list({id(r): r for r, _ in parts}.values())  # a draw's work once, however many parts
    return replace(rollouts[0], tokens=torch.cat(toks), prompt_len=P, pad=torch.cat(pads),
                   completion_mask=torch.cat(masks), logprobs=torch.cat(lps), routing=routing,
                   **work_of(rollouts))


def work_of(rollouts: list[Rollout]) -> dict:
    """The cache and work numbers of rollouts drawn one after another: peaks the largest, work counts
    (speculative drafts among them) the sum."""
    return {"cache_bytes": max(r.cache_bytes for r in rollouts),
            "cache_pool_bytes": max(r.cache_pool_bytes for r in rollouts),
            **{k: sum(getattr(r, k) for r in rollouts) for k in Rollout.WORK_COUNTS}}


def update_batches(cfg: Config, ps: ParallelState, rollout: Rollout, keep: torch.Tensor
                   ) -> tuple[list[TrainBatch], list[Optional[int]]]:
    """This rank's minibatches of the rollout (its j-th block of whole groups each) as training
    rows, packed (rl.packed_update) or padded, and each one's microbatch count (agreed over the
    data-parallel group for packed rows, whose number depends on the lengths: every rank of an
    expert-parallel group must run as many forwards)."""
    rl = cfg.rl
    multiple = ps.cfg.sequence_divisor
    parts = torch.arange(rollout.tokens.shape[0], device=rollout.tokens.device).chunk(rl.minibatches)
    if not rl.packed_update:
        full = to_train_batch(rollout, keep, multiple)
        return [full.rows(part) for part in parts], [None] * len(parts)
    size = cfg.data.micro_batch_size
    batches = [pack_batch(rollout, keep, part, rl.pack_tokens, multiple) for part in parts]
    local = torch.tensor([-(-b.input_ids.shape[0] // size) for b in batches], dtype=torch.long,
                         device=rollout.tokens.device)
    if ps.g("dp") is not None:
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX, group=ps.g("dp"))
    counts = local.tolist()
    batches = [b if b.input_ids.shape[0] >= m else pack_batch(rollout, keep, part, rl.pack_tokens, multiple, m)
               for b, m, part in zip(batches, counts, parts)]
    return batches, counts


def microbatches(b: TrainBatch, size: int, extra: dict[str, torch.Tensor], replay: bool,
                 count: Optional[int] = None) -> list[Microbatch]:
    """Split rows into `count` microbatches (default: rows / size, rounded up), as even as can be."""
    rows = b.input_ids.shape[0]
    n = min(count or -(-rows // max(size, 1)), rows)
    out = []
    for i in range(n):
        lo, hi = i * rows // n, (i + 1) * rows // n
        routing = {k: v[:, lo:hi] for k, v in b.routing.items()} if replay and b.routing else None
        out.append(Microbatch(b.input_ids[lo:hi], None, b.attn_mask[lo:hi], b.position_ids[lo:hi], routing,
                              {"targets": b.targets[lo:hi], "mask": b.mask[lo:hi],
                               **{k: v[lo:hi] for k, v in extra.items()}},
                              None if b.counted is None else b.counted[lo:hi]))
    if b.support is not None:  # the sampler's support of each microbatch (rl.keep_sampling_mask)
        for mb, support in zip(out, b.support):
            mb.extra["support"] = support
    return out
