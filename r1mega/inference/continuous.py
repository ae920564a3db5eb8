"""Continuous batching on the training shards: the rollout engine.

A queue of (prompt, sample) rows; each step the scheduler admits rows up to a row budget (and,
softly, a cache-token budget), then runs at most two forwards:
  decode   the live rows, one token each (their last sampled token), over the paged cache;
  prefill  the prompts of newly admitted rows, once per distinct prompt: the G samples of a prompt
           share its cache blocks (`paged_cache.py`) and draw their first tokens from its logits.
A row retires at EOS, a stop or its length limit; its blocks are freed at once and its place is
refilled the next step, so finished rows cost nothing.

Every rank of an expert-parallel group must run the same forwards (the all-to-all): one small
all-reduce per step over DP (x CP: rows are split over CP ranks) says which forwards anyone needs; a rank without rows for one joins
with a one-token forward on the null block (never by decoding a finished row). Under PP every
stage of a pipeline runs the same schedule (the last stage samples and broadcasts the tokens).

Sampling noise is keyed by (seed, the row's key, position in its completion), so a sample's tokens
do not depend on its slot, the step it was admitted at, the batch around it or the layout.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.inference.paged_cache import NULL_BLOCK, BlockPool, decode_view, prefill_view
from r1mega.inference import compiled_decode
from r1mega.kernels.block_attention import left_pad
from r1mega.inference.sampling import gumbel_noise, row_keys_host, sample
from r1mega.kernels.cpu_experts import decoding_spreads, experts_over_cores
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import recv_activation, send_activation


@dataclass
class _Group:
    """One distinct prompt: prefilled once, its blocks shared by its samples."""
    prompt: list[int]
    waiting: int  # samples not admitted yet
    blocks: Optional[list[int]] = None
    logits: Optional[torch.Tensor] = None  # last-position logits (last stage), until all samples drew from them
    routing: dict = field(default_factory=dict)  # layer -> experts [prompt tokens, k]


@dataclass
class _Row:
    index: int  # output row
    group: _Group
    key: int  # noise key
    slot: int = -1
    blocks: list[int] = field(default_factory=list)
    length: int = 0  # tokens in the cache
    out: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    admitted: int = -1  # admission order (the youngest row is preempted first)
    resume: bool = False  # preempted: re-admitted by recomputing what its cache lost
    kept: list[int] = field(default_factory=list)  # preempted: its prompt's full blocks, still shared
    start: int = 0  # re-admitted: cache positions it recomputes from (0: prefilled again)
    tail: Optional[int] = None  # re-admitted: a block holding its prompt's last partial block, pinned
    noise: Optional[torch.Tensor] = None  # compiled steps: Gumbel noise [n, V] of completion positions ...
    noise_at: int = 0  # ... noise_at .. noise_at + n - 1

    def recompute(self) -> list[int]:
        """What a preempted row's cache must hold again: its prompt and every token but the last,
        which its next decoding step feeds."""
        return self.group.prompt + self.out[:-1]


# The compiled step draws a row's noise this many positions ahead, while that stays within
# NOISE_AHEAD_ELEMENTS numbers a row (a real vocabulary's noise is mostly per-number work: one at a time)
NOISE_AHEAD = 16
NOISE_AHEAD_ELEMENTS = 1 << 13

# Tokens per row of one forward that recomputes a re-admitted row on top of its kept blocks: the
# decoding attention scores [rows, heads, chunk, cached], so a long recompute takes several forwards.
RECOMPUTE_CHUNK = 64


def recompute_rounds(lengths: list[int], chunk: int = RECOMPUTE_CHUNK) -> list[int]:
    """Tokens per row in each forward recomputing rows of `lengths` tokens together: every row still
    recomputing takes the same count (min(chunk, the fewest left)), so a forward's rows are uniform
    (the decoding view takes s tokens a row; the batch-invariant layout needs them right-aligned)."""
    left, rounds = [n for n in lengths if n > 0], []
    while left:
        s = min(chunk, min(left))
        rounds.append(s)
        left = [n - s for n in left if n > s]
    return rounds


def row_need_tokens(prompt_len: int, max_new_tokens: int, block_size: int, step_positions: int = 1) -> int:
    """The most cache tokens one row of this prompt can take in the engine's accounting (the least
    max_cache_tokens that admits it): its last decoding step's blocks (prompt and every token but the
    last cached, `step_positions` more written), or at admission its prompt in whole blocks (kept for
    its waiting samples) and its own first step's blocks."""
    bs, s, p = block_size, step_positions, prompt_len
    blocks = -(-p // bs) + -(-(p + s) // bs) - p // bs
    if max_new_tokens >= 2:  # tokens to decode after the first (which the prompt's logits draw)
        blocks = max(blocks, -(-(p + max_new_tokens - 2 + s) // bs))
    return blocks * bs


def step_group(ps: ParallelState) -> str:
    """The ranks that must run the same forwards: DP (which EP spans), and CP when the rollout rows
    are split over CP ranks."""
    return "dp_cp" if ps.cp > 1 else "dp"


def _group_max(values: list[int], ps: ParallelState) -> list[int]:
    group = ps.g(step_group(ps))
    if group is None:
        return values
    t = torch.tensor(values, dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def table_with_row(table: torch.Tensor, slot: int, blocks: list[int]) -> torch.Tensor:
    """The block table with `slot`'s row set to `blocks` (a new, wider table when they outgrow it)."""
    n = len(blocks)
    if n > table.shape[1]:
        # a table made under inference mode grows into one made likewise (the engine is built
        # outside it): the compiled step's graphs guard on the kind and would be compiled again
        with torch.inference_mode(table.is_inference()):
            grown = torch.zeros(table.shape[0], max(n, 2 * table.shape[1]), dtype=torch.long, device=table.device)
        grown[:, :table.shape[1]] = table
        table = grown
    table[slot, :n] = torch.tensor(blocks, dtype=torch.long, device=table.device)
    return table


class ContinuousBatcher:
    # One token per row and step. A subclass with its own decoding step (speculative decoding) sets
    # this False: it then decodes one batch per step (no groups in flight under PP).
    one_token_steps = True
    keeps_hidden = False  # the last stage keeps its final-normed hidden after each forward
    step_positions = 1  # cache positions a row's decoding step writes (speculative: the k drafts too)
    keeps_prompt_blocks = True  # a preempted row keeps its prompt's shared blocks (recomputes on top)

    def __init__(self, model, ps: ParallelState, prompts: list[list[int]], keys: list[int], gen):
        self.model, self.ps, self.gen = model, ps, gen
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.pad_id = gen.eos_id if gen.eos_id is not None else 0
        parts, self.layer_view = model.paged_kv_layout()
        self.pool = BlockPool(parts, gen.block_size, self.dtype, self.device)
        self.bs = gen.block_size
        groups: dict[tuple, _Group] = {}
        self.rows = []
        for i, (p, k) in enumerate(zip(prompts, keys)):
            if not p:
                raise ValueError(f"generation: prompt {i} is empty")
            g = groups.setdefault(tuple(p), _Group(list(p), 0))
            g.waiting += 1
            self.rows.append(_Row(i, g, int(k)))
        self.queue = deque(self.rows)
        self.live: list[_Row] = []
        self.max_rows = gen.max_rows or len(self.rows)
        self.free_slots = list(range(self.max_rows - 1, -1, -1))
        self.table = torch.zeros(self.max_rows, 16, dtype=torch.long, device=self.device)
        pp_ranks = ps.members.get("pp", [ps.rank])
        self.pp_ranks = pp_ranks
        self.prev = pp_ranks[ps.r("pp") - 1] if not model.is_first else None
        self.nxt = pp_ranks[ps.r("pp") + 1] if not model.is_last else None
        self.vocab = gen.vocab_size or model.vocab_size
        self.decode_routing: dict[int, list] = {}  # layer -> [(rows, completion positions, experts [b, k])]
        self.decode_row_steps = self.forwards = 0
        self.overlap_sends, self.sent = False, None  # pipelined decoding: sends waited for a tick later
        self.admissions = self.preemptions = 0
        self.prefill_tokens = 0  # tokens fed to prompt prefills and to preempted rows' recomputation
        self.recomputed_tokens = 0  # ... of which for preempted rows
        self.reserved = 0  # cache tokens admitted rows not started yet will take (see decode_pipelined)
        # few-row decoding steps as one compiled graph (inference/compiled_decode.py), where it can run
        self.compiled = gen.compile_decode and compiled_decode.usable(model, ps, self.one_token_steps)
        if gen.max_cache_tokens:
            self._check_budget()

    def _check_budget(self) -> None:
        """A budget below what one row can need would stall or overrun it: refused before any forward
        (the need agreed over the step group, so that every rank raises)."""
        need = max(((row_need_tokens(n, self.gen.max_new_tokens, self.bs, self.step_positions), n)
                    for n in {len(r.group.prompt) for r in self.rows}), default=(0, 0))
        need = _group_max(list(need), self.ps)
        if self.gen.max_cache_tokens < need[0]:
            extra = f" + {self.step_positions - 1} draft positions" if self.step_positions > 1 else ""
            raise ValueError(
                f"generation: max_cache_tokens (GRPO: rl.rollout_cache_tokens) = {self.gen.max_cache_tokens} is "
                f"below the {need[0]} cache tokens one row can need (a {need[1]}-token prompt + max_new_tokens "
                f"{self.gen.max_new_tokens}{extra}, in blocks of {self.bs}); raise it, or 0 for no limit")

    # ---- scheduling ------------------------------------------------------------------------
    def admit(self) -> list[_Row]:
        new, tokens, counted = [], self._tokens_next_step(), set()
        budget = self.gen.max_cache_tokens
        if budget and not self.live and self.queue and tokens + self._need(self.queue[0], counted) > budget:
            self._release_orphans()  # nothing runs: prompt blocks held for waiting rows make room first
            tokens = self._tokens_next_step()
        while self._fits(self.queue[0] if self.queue else None, len(new), tokens, counted):
            r = self.queue.popleft()
            tokens += self._need(r, counted)
            if not r.resume:  # a re-admitted row never prefills its group: its new siblings still count it
                counted.add(id(r.group))
            r.slot = self.free_slots.pop()
            r.admitted, self.admissions = self.admissions, self.admissions + 1
            new.append(r)
        self.reserved = tokens - self._tokens_next_step() if new else 0
        return new

    def _tokens_next_step(self, rows: Optional[list[_Row]] = None) -> int:
        """Cache tokens in use once the live rows (or `rows`) have their blocks for their next decoding
        step (its `step_positions`). The same on every pipeline stage, even mid-segment where a stage
        has already allocated a group's next blocks and another not yet."""
        s, bs = self.step_positions, self.bs
        rows = self.live if rows is None else rows
        return (self.pool.used + sum(max(0, -(-(r.length + s) // bs) - len(r.blocks)) for r in rows)) * bs

    def _need(self, r: _Row, counted: set) -> int:
        """Cache tokens admitting r takes: its group's prompt when not prefilled yet (once per group:
        the samples share it), or a preempted row's blocks past the prompt blocks it kept; and a
        block for its own tokens."""
        bs, s = self.bs, self.step_positions
        if r.resume:  # its recomputed tokens and its next step's, past the prompt blocks it kept
            return (-(-(len(r.recompute()) + s) // bs) - len(r.kept)) * bs
        # the prompt in whole blocks: while samples of its group still wait, the group keeps its partial
        # last block and every admitted sample copies it (counting tokens let the cache overshoot)
        p = len(r.group.prompt)
        own = (-(-(p + s) // bs) - p // bs) * bs  # its first step's blocks past the shared ones
        return own + (-(-p // bs) * bs if r.group.blocks is None and id(r.group) not in counted else 0)

    def pipelined(self) -> bool:
        return self.ps.pp > 1 and self.gen.pipelined_decode and self.one_token_steps

    def preempt(self) -> None:
        """Keep the cache within max_cache_tokens as rows grow: requeue the youngest live rows at the
        front, their tokens kept and their blocks freed, until the next step's blocks fit. A lone row
        left over the budget first frees prompt blocks held for rows that wait (`_check_budget` makes
        sure one row alone fits). A requeued row is recomputed when re-admitted (`resume`); its noise
        is keyed by position, so it draws the same tokens it would have."""
        budget = self.gen.max_cache_tokens
        while budget and self._tokens_next_step() > budget:
            if len(self.live) < 2:
                if self._release_orphans():
                    continue
                break
            r = max(self.live, key=lambda x: x.admitted)
            self.live.remove(r)
            self.requeue(r)

    def requeue(self, r: _Row) -> None:
        """Preempt a row that no forward in flight uses: its blocks freed, at the front of the queue. It
        keeps its prompt's full blocks while another holder (its group, a sibling) shares them: freeing
        them would free nothing (`keeps_prompt_blocks`; else it is prefilled again whole)."""
        full = len(r.group.prompt) // self.bs
        shared = self.keeps_prompt_blocks and full and self.pool.refs[r.blocks[0]] > 1
        r.kept = r.blocks[:full] if shared else []
        r.blocks = r.blocks[len(r.kept):]
        self.retire(r)
        r.resume = True
        self.queue.appendleft(r)
        self.preemptions += 1

    def _release_orphans(self) -> bool:
        """Free prompt blocks held for rows that wait: a group's own references (its waiting samples then
        prefill it again; live samples keep the full blocks they share), and blocks only requeued rows
        keep (they are then prefilled again on re-admission, as if never kept). Whether any went."""
        freed = False
        for g in {id(r.group): r.group for r in self.queue}.values():
            if g.blocks is not None and g.waiting > 0:
                self.pool.release(g.blocks)
                self.drop_group(g)
                freed = True
        holders: dict[int, list[_Row]] = {}
        for r in self.queue:
            if r.kept:
                holders.setdefault(r.kept[0], []).append(r)
        for block, rows in holders.items():
            if self.pool.refs[block] == len(rows):
                for r in rows:
                    self.pool.release(r.kept)
                    r.kept = []
                freed = True
        return freed

    def drop_group(self, g: _Group) -> None:
        """A group's prompt cache released (its blocks were): prefilled again when a sample is admitted."""
        g.blocks, g.logits = None, None

    def plan_resume(self, r: _Row) -> None:
        """Where a re-admitted row's recomputation starts: after its prompt when it kept the prompt's
        full blocks and a live block still holds the prompt's partial last block (the group's own
        while samples wait, else a live sibling's copy; pinned until copied), else after its kept
        blocks; at 0 (a prefill of prompt and tokens) when it kept nothing of a prompt of full blocks."""
        g, p, bs = r.group, len(r.group.prompt), self.bs
        full = p // bs
        r.start, r.tail = 0, None
        if len(r.kept) < full:
            return
        if p % bs:
            r.tail = (g.blocks[-1] if g.waiting > 0 and g.blocks is not None
                      else next((s.blocks[full] for s in self.live if s.group is g), None))
        if r.tail is not None:
            self.pool.incref([r.tail])
        r.start = p if r.tail is not None or not p % bs else full * bs

    def resume(self, rows: list[_Row], rounds: int) -> None:
        """Re-admitted rows that recompute on top of kept blocks (`plan_resume`, start > 0): their
        kept blocks, a copy of the pinned partial prompt block, blocks for the rest; then `rounds`
        forwards (agreed over the step group; empty ones when this rank has none left) feed the tokens
        from `start` on, as decoding feeds several tokens a row (positions past the cached ones)."""
        src, dst, seqs = [], [], []
        for r in rows:
            r.blocks, r.kept = list(r.kept), []
            if r.tail is not None:
                r.blocks.append(self.pool.alloc())
                src.append(r.tail)
                dst.append(r.blocks[-1])
            seq = r.recompute()
            r.blocks += [self.pool.alloc() for _ in range(-(-len(seq) // self.bs) - len(r.blocks))]
            self._set_table(r)
            r.length = r.start
            seqs.append(seq)
            self.prefill_tokens += len(seq) - r.start
            self.recomputed_tokens += len(seq) - r.start
        self.pool.copy_blocks(src, dst)
        self.pool.release(src)
        mine = recompute_rounds([len(seq) - r.start for r, seq in zip(rows, seqs)])
        for i in range(rounds):
            if i >= len(mine):
                self.empty_forward()
                continue
            s = mine[i]
            todo = [(r, seq) for r, seq in zip(rows, seqs) if r.length < len(seq)]
            ids = torch.tensor([seq[r.length:r.length + s] for r, seq in todo], dtype=torch.long, device=self.device)
            slots, lengths = torch.tensor([[r.slot, r.length] for r, _ in todo], dtype=torch.long,
                                          device=self.device).t()
            view = decode_view(self.pool, self.layer_view, self.table[slots], lengths, s=s,
                               longest=max(r.length for r, _ in todo) + s)
            self._forward(ids, lengths[:, None] + torch.arange(s, device=self.device), view)
            for r, _ in todo:
                r.length += s
        for r in rows:
            r.tail = None

    def reprefilled(self, rows: list[_Row], groups: list[_Group], redraft: int = 0) -> None:
        """Re-admitted rows prefilled again whole (start 0): each one's recomputed sequence, prefilled
        as its own group, is its cache. (redraft: see `redrafts`.)"""
        for r, g in zip(rows, groups):
            r.blocks, r.length = g.blocks, len(g.prompt)
            self._set_table(r)

    def _fits(self, r: Optional[_Row], admitted: int, tokens: int, counted: set) -> bool:
        """Whether r can be admitted beside `admitted` rows just admitted: a free place and, under
        max_cache_tokens, room for it (the first row always fits, so the queue never stalls)."""
        if r is None or len(self.live) + admitted >= self.max_rows:
            return False
        budget = self.gen.max_cache_tokens
        return not budget or not (self.live or admitted) or tokens + self._need(r, counted) <= budget

    def _admissible(self, pending: int) -> bool:
        """Would admit() take the queue's first row now (`pending` rows admitted, not yet started, and
        `reserved` for them)? Mid-segment under PP the stages' pools differ (a group's blocks come stage
        by stage): the tokens counted are those once every live row has its next blocks, the same on
        every stage."""
        return self._fits(self.queue[0] if self.queue else None, pending, self._tokens_next_step() + self.reserved,
                          set())

    def redrafts(self, resumed: list[_Row]) -> int:
        """Forwards re-admitted rows need beyond their recomputation (speculative decoding: their drafts),
        agreed over the step group."""
        return 0

    def _preempt_idle(self, groups: list[list[_Row]], busy) -> bool:
        """Mid-segment under PP, after a group's sampling: keep the cache (with the blocks reserved for
        rows admitted but not started) within max_cache_tokens by requeuing the youngest rows of the
        groups no stage is working on (`busy`: those in flight). Their blocks are freed at the same
        sampling on every stage, and `_tokens_next_step` is the same on every stage, so the stages
        choose alike. False when that is not enough (the segment then ends and `preempt` decides)."""
        budget = self.gen.max_cache_tokens
        while budget and self._tokens_next_step() + self.reserved > budget:
            idle = [(r, grp) for i, grp in enumerate(groups) if i not in busy for r in grp]
            if not idle or len(self.live) < 2:
                return False
            r, grp = max(idle, key=lambda x: x[0].admitted)
            grp.remove(r)
            self.live.remove(r)
            self.requeue(r)
        return True

    def _set_table(self, r: _Row) -> None:
        self.table = table_with_row(self.table, r.slot, r.blocks)

    def retire(self, r: _Row) -> None:
        self.pool.release(r.blocks)
        r.blocks, r.noise = [], None
        self.free_slots.append(r.slot)

    def finished(self, r: _Row, tok: int) -> bool:
        gen = self.gen
        if (gen.eos_id is not None and tok == gen.eos_id) or tok in gen.eos_ids:
            return True
        if gen.stop is not None and gen.stop(r.out):  # the row's own list: nothing re-built per step
            return True
        return len(r.out) >= gen.max_new_tokens

    # ---- forwards ----------------------------------------------------------------------------
    def _forward(self, ids, pos, view, all_logits: bool = False):
        """This stage's forward (received from / sent to its neighbours); the last stage's logits of the
        last position (all_logits: of every position [s, b, V/tp]). With `keeps_hidden` the last stage
        keeps its final-normed hidden in self.hidden (the MTP draft's input)."""
        hidden = None
        if self.prev is not None:
            hidden = recv_activation((ids.shape[1], ids.shape[0], self.model.hidden_size), self.dtype, self.device,
                                     self.prev)
        extra = {"keep_hidden": True} if self.keeps_hidden else {}  # (a family with an MTP draft)
        out = self.model(ids, hidden=hidden, position_ids=pos, cache=view, last_logits_only=not all_logits, **extra)
        self.forwards += 1
        if self.nxt is not None:
            self.sent = send_activation(out.hidden, self.nxt, wait=not self.overlap_sends)
            return None
        if self.keeps_hidden:
            self.hidden = out.hidden
        return out.logits if all_logits else out.logits[-1]

    def _sample(self, logits, rows: list[_Row], steps: list[int]):
        """Tokens and log-probs (identical on every rank of the pipeline and TP group)."""
        n = len(rows)
        tok = torch.zeros(n, dtype=torch.long, device=self.device)
        lp = torch.zeros(n, device=self.device)
        if logits is not None:
            keys = row_keys_host(self.gen.seed, steps, [r.key for r in rows], self.device)
            tok, lp = sample(logits, self.ps, self.gen.temperature, self.gen.top_p, self.gen.top_k, keys, self.vocab)
        if self.ps.pp > 1:
            both = torch.stack([tok.double(), lp.double()])
            dist.broadcast(both, src=self.pp_ranks[-1], group=self.ps.g("pp"))
            tok, lp = both[0].long(), both[1].float()
        return tok.tolist(), lp.tolist()

    def empty_forward(self) -> None:
        """Join the group's forward with no rows: one token on the null block, its result dropped."""
        view = decode_view(self.pool, self.layer_view, torch.full((1, 1), NULL_BLOCK, device=self.device),
                           torch.zeros(1, dtype=torch.long, device=self.device))
        zero = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._forward(zero, zero, view)
        return None

    def empty_decode(self) -> None:  # a speculative stepper joins its draft forwards too
        self.empty_forward()

    def empty_prefill(self) -> None:
        self.empty_forward()

    def decode(self) -> None:
        """One decoding step of every live row (one token each)."""
        if self.compiled and len(self.live) <= compiled_decode.COMPILED_MAX_ROWS:
            self.live = self.decode_compiled(self.live)
        else:
            self.live = self.decode_rows(self.live, self.decode_forward(self.live))

    def _decode_inputs(self, rows: list[_Row]):
        """Blocks for the tokens that start one, then (view, ids [b, 1], positions [b, 1]) of `rows`."""
        self._step_blocks(rows)
        return self._view_inputs(rows)

    def _step_blocks(self, rows: list[_Row]) -> None:
        for r in rows:  # a block for each row whose next token starts one
            if r.length % self.bs == 0:
                r.blocks.append(self.pool.alloc())
                self._set_table(r)

    def _step_ints(self, rows: list[_Row]) -> torch.Tensor:
        """[b, 3] int64: each row's (slot, cached length, last token), one host-to-tensor copy a step."""
        return torch.tensor([[r.slot, r.length, r.out[-1]] for r in rows], dtype=torch.long, device=self.device)

    def _view_inputs(self, rows: list[_Row]):
        slots, lengths, ids = self._step_ints(rows).t()
        view = decode_view(self.pool, self.layer_view, self.table[slots], lengths,
                           longest=max(r.length for r in rows) + 1)
        return view, ids[:, None], lengths[:, None]

    def _decoded(self, rows: list[_Row], routing: dict) -> None:
        """Count a decoding forward of `rows`; keep the experts it routed them to (`routing`: the
        view's record)."""
        self.decode_row_steps += len(rows)
        if self.gen.record_routing:
            index = torch.tensor([r.index for r in rows])
            at = torch.tensor([len(r.out) - 1 for r in rows])
            for layer, idx in routing.items():
                self.decode_routing.setdefault(layer, []).append((index, at, idx[0]))

    def decode_forward(self, rows: list[_Row]) -> Optional[torch.Tensor]:
        """The decoding forward of `rows` on this stage: blocks for the tokens that start one, the
        view, the forward (received from / sent to the neighbouring stages); the last stage's logits."""
        return self._forward_decoded(rows, *self._decode_inputs(rows))

    def decode_compiled(self, rows: list[_Row]) -> list[_Row]:
        """decode_rows(rows, decode_forward(rows)) with the forward and the sampler as one compiled
        graph (one process, `GenerationConfig.compile_decode`); the rows still going."""
        self._step_blocks(rows)
        gen = self.gen
        noise = self._step_noise(rows) if gen.temperature > 0 else None
        packed = self._step_ints(rows)  # the graph builds the cache view from them
        try:
            step = compiled_decode.compiled_step(self.model, self.ps, len(rows) == 1)
            tok, lp, routing, _slots = step(self.model, self.ps, self.pool, self.layer_view, packed, self.table,
                                            max(r.length for r in rows) + 1, noise, gen.temperature, gen.top_p,
                                            gen.top_k, self.vocab)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # before the graph ran: nothing written yet
            compiled_decode.compile_failed(e)
            self.compiled = False
            return self.decode_rows(rows, self._forward_decoded(rows, *self._view_inputs(rows)))
        self.forwards += 1
        self._decoded(rows, routing)
        return self.advance_rows(rows, tok.tolist(), lp.tolist())

    def _step_noise(self, rows: list[_Row]) -> torch.Tensor:
        """The rows' Gumbel noise [b, V] at their next completion positions, for the compiled step. A
        row's noise is drawn NOISE_AHEAD positions at a time (the same numbers: each is keyed by seed,
        row and position alone): drawn a step at a time it cost a 1-row step of the tiny model ~0.13 ms
        of ~0.75, mostly per call."""
        gen, vocab = self.gen, self.model.vocab_size
        ahead = max(1, min(NOISE_AHEAD, NOISE_AHEAD_ELEMENTS // vocab))
        stale = [r for r in rows if r.noise is None or not 0 <= len(r.out) - r.noise_at < r.noise.shape[0]]
        if stale:  # one draw (gumbel_noise hashes a large one a cache-sized block at a time)
            keys = row_keys_host(gen.seed, [len(r.out) + j for r in stale for j in range(ahead)],
                                 [r.key for r in stale for _ in range(ahead)], self.device)
            for r, noise in zip(stale, gumbel_noise(keys, 0, vocab).view(len(stale), ahead, vocab)):
                r.noise, r.noise_at = noise, len(r.out)
        return torch.stack([r.noise[len(r.out) - r.noise_at] for r in rows])

    def _forward_decoded(self, rows: list[_Row], view, ids, pos) -> Optional[torch.Tensor]:
        logits = self._forward(ids, pos, view)
        self._decoded(rows, view.routing)
        return logits

    def decode_rows(self, rows: list[_Row], logits: Optional[torch.Tensor]) -> list[_Row]:
        """Sample the next token of `rows` (logits on the last stage; every stage learns the tokens),
        retire the finished ones; the rows still going."""
        return self.advance_rows(rows, *self._sample(logits, rows, [len(r.out) for r in rows]))

    def advance_rows(self, rows: list[_Row], toks: list[int], lps: list[float]) -> list[_Row]:
        """Append each row's sampled token, retire the finished rows; the rows still going."""
        still = []
        for r, t, lp in zip(rows, toks, lps):
            r.length += 1
            r.out.append(t)
            r.logps.append(lp)
            if self.finished(r, t):
                self.retire(r)
            else:
                still.append(r)
        return still

    def decode_pipelined(self, pending: int) -> None:
        """Decoding under PP with the pipeline full: the live rows in up to pp groups (of at least
        `pipelined_min_rows` rows), stage 0 starting an idle group every tick and stage s working at
        tick t on the group stage 0 started at tick t - s, so the stages compute at once instead of
        in turn (one batch per step leaves each stage idle (pp - 1) / pp of the time). The last stage
        samples the group it finished and broadcasts the tokens; stage 0 may start it again the next
        tick. A group's rows change only between its sampling and its restart, so every stage sees
        the same rows and lengths for it. Under max_cache_tokens rows outgrowing the budget are
        preempted between a group's sampling and its restart (`_preempt_idle`), the pipeline kept
        full. Runs until rows wait to be admitted (checked after the first pp ticks; the pipeline then
        drains, as a prefill cannot overtake activations in flight between two stages), the groups
        have shrunk below the minimum (then regrouped), the idle rows cannot make room, or no rows are
        left. `pending`: rows admitted but not yet started (they hold places and `reserved` tokens)."""
        pp, s, last = self.ps.pp, self.ps.r("pp"), self.ps.pp - 1
        m = max(1, min(pp, len(self.live) // max(1, self.gen.pipelined_min_rows)))
        groups: list[list[_Row]] = [self.live[g::m] for g in range(m)]
        flight: dict[int, Optional[int]] = {}  # start tick -> group (None: an empty forward beside DP peers)
        sending = None  # this stage's last isend, waited on before the next
        t, turn, stopping, logits, over = 0, 0, False, None, False
        while True:
            idle = [g for g in (turn % m, *range(m)) if groups[g] and g not in flight.values()]
            if not stopping:  # every rank of the step group decides alike
                live = sum(map(len, groups))
                want = over or (t >= pp and (self._admissible(pending)
                                             or (m > 1 and live < m * self.gen.pipelined_min_rows)))
                want, any_idle, any_live = _group_max([int(want), int(bool(idle)), int(live > 0)], self.ps)
                stopping = bool(want) or not any_live
                if not stopping and any_idle:
                    flight[t] = idle[0] if idle else None
                    turn = (idle[0] + 1) if idle else turn
            if stopping and not flight:
                break
            if t - s in flight:  # this stage's work this tick
                g = flight[t - s]
                logits, sending = self._pipelined_forward(groups[g] if g is not None else None, sending)
            if t - last in flight:  # the last stage finished that group this tick
                g = flight.pop(t - last)
                if g is not None:
                    groups[g] = self.decode_rows(groups[g], logits if s == last else None)
                    self.live = [r for grp in groups for r in grp]  # places freed count at once
                    over = over or not self._preempt_idle(groups, set(flight.values()))
            t += 1
        if sending is not None:
            sending[0].wait()
        self.live = [r for grp in groups for r in grp]

    def _pipelined_forward(self, rows: Optional[list[_Row]], sending):
        """One stage's forward of a group (None: an empty one, joining a DP peer's). Its send is not
        waited for (the next stage receives it next tick), but the previous one is first: one
        activation in flight per pair of stages. (logits on the last stage, this send)."""
        if sending is not None:
            sending[0].wait()
        self.overlap_sends = True
        try:
            logits = self.decode_forward(rows) if rows is not None else self.empty_forward()
        finally:
            self.overlap_sends = False
        sent, self.sent = self.sent, None
        return logits, sent

    def prefill(self, groups: list[_Group]) -> None:
        ids, pad = left_pad([g.prompt for g in groups], self.pad_id, self.device)
        self.prefill_tokens += sum(len(g.prompt) for g in groups)
        s = ids.shape[1]
        for g in groups:
            g.blocks = [self.pool.alloc() for _ in range(-(-len(g.prompt) // self.bs))]
        view = prefill_view(self.pool, self.layer_view, [g.blocks for g in groups], pad, s)
        pos = (torch.arange(s, device=self.device)[None, :] - pad[:, None]).clamp(min=0)
        logits = self._forward(ids, pos, view)
        for j, g in enumerate(groups):
            if logits is not None:
                g.logits = logits[j].clone()
            if self.gen.record_routing:
                g.routing = {layer: idx[int(pad[j]):, j] for layer, idx in view.routing.items()}

    def start(self, new: list[_Row]) -> None:
        """Newly admitted rows: blocks from their prompt (full ones shared, the partial last one copied),
        then each draws its first token from its prompt's logits."""
        src, dst = [], []
        for r in new:
            g, p = r.group, len(r.group.prompt)
            g.waiting -= 1
            if g.waiting == 0:  # the last sample takes the group's own references
                r.blocks = g.blocks
            else:
                full = p // self.bs
                r.blocks = list(g.blocks[:full])
                self.pool.incref(r.blocks)
                if p % self.bs:
                    src.append(g.blocks[-1])
                    r.blocks.append(self.pool.alloc())
                    dst.append(r.blocks[-1])
            r.length = p
            self._set_table(r)
        self.pool.copy_blocks(src, dst)
        logits = None
        if self.nxt is None:
            logits = torch.stack([r.group.logits for r in new])
        toks, lps = self._sample(logits, new, [0] * len(new))
        for r, t, lp in zip(new, toks, lps):
            if r.group.waiting == 0:
                r.group.logits = None
            r.out.append(t)
            r.logps.append(lp)
            if self.finished(r, t):
                self.retire(r)
            else:
                self.live.append(r)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        spread = decoding_spreads(self.model, min(len(self.rows), self.max_rows), self.device)
        with contextlib.ExitStack() as decoding:
            step = 0
            while True:
                self.preempt()
                new = self.admit()
                resumed = [r for r in new if r.resume]
                new = [r for r in new if not r.resume]
                for r in resumed:
                    self.plan_resume(r)
                extended = [r for r in resumed if r.start]
                resumed = [r for r in resumed if not r.start]
                groups = list({id(r.group): r.group for r in new if r.group.blocks is None}.values())
                recomputed = [_Group(r.recompute(), 1) for r in resumed]
                need_decode, need_prefill, busy, rounds, redraft = _group_max(
                    [int(bool(self.live)), int(bool(groups or resumed)),
                     int(bool(self.live or new or resumed or extended or self.queue)),
                     len(recompute_rounds([len(r.recompute()) - r.start for r in extended])),
                     self.redrafts(resumed)], self.ps)
                if not busy:
                    break
                if step == 1 and spread:  # as the static engine: the prompt's forward keeps every thread
                    decoding.enter_context(experts_over_cores(self.device))
                if need_decode and self.pipelined():
                    self.decode_pipelined(len(new) + len(resumed))
                elif need_decode:
                    self.decode() if self.live else self.empty_decode()
                if need_prefill:
                    self.prefill(groups + recomputed) if groups or resumed else self.empty_prefill()
                    self.recomputed_tokens += sum(len(g.prompt) for g in recomputed)
                self.reprefilled(resumed, recomputed, redraft)
                self.resume(extended, rounds)  # before start(): its pinned blocks outlive the step's retirements
                if new:
                    self.start(new)
                for r in resumed + extended:
                    r.resume = False
                    self.live.append(r)
                step += 1

    def routing(self, P: int, width: int, dtype: torch.dtype = torch.long) -> dict[int, torch.Tensor]:
        """{layer: experts [width, B, k]} (of `dtype`) in the left-padded output layout; positions no
        forward routed (pads, the last token) hold experts 0..k-1."""
        out = {}
        B = len(self.rows)
        layers = set(self.decode_routing)
        for r in self.rows:
            layers |= set(r.group.routing)
        for layer in sorted(layers):
            sample_idx = (self.decode_routing[layer][0][2] if layer in self.decode_routing
                          else next(r.group.routing[layer] for r in self.rows if layer in r.group.routing))
            k = sample_idx.shape[-1]
            full = torch.arange(k, dtype=dtype, device=sample_idx.device).expand(width, B, k).clone()
            for r in self.rows:
                pr = r.group.routing.get(layer)
                if pr is not None:
                    full[P - pr.shape[0]:P, r.index] = pr
            if layer in self.decode_routing:
                rows, at, idx = (torch.cat(x) for x in zip(*self.decode_routing[layer]))
                keep = P + at < width
                full[(P + at)[keep], rows[keep]] = idx[keep].to(full.dtype)
            out[layer] = full
        return out
