"""Self-speculative decoding: DeepSeek-V3's own MTP module drafts, the main model verifies.

One decoding step of the rollout engine (`continuous.py`) for each live row, whose cache holds L
tokens (prompt + completion so far) and whose last sampled token x0 is not cached yet:
  verify    one main-model forward over the k+1 positions L..L+k, tokens [x0, d1..dk] (the drafts
            made in the previous step), on the paged cache (MLA's absorbed decode takes several
            positions per row);
  accept    d_j with probability min(1, p_{j-1}(d_j) / q_j(d_j)), p: the main model's processed
            distribution (temperature, then the sampler's top-k/top-p support, `sampler_support`),
            q: the draft's; at the first rejection draw from normalize(max(0, p - q)); after k
            acceptances a bonus token from p_k. So every token has exactly the target distribution.
            Greedy: accept iff d_j = argmax p_{j-1}, which makes the output the plain greedy output;
  rollback  the row keeps L + a + 1 tokens (a accepted); blocks past what the next step needs are
            freed;
  draft     the first MTP layer, on its own paged cache (its entry at position i reads the main
            model's final-normed hidden h_i and the embedding of token i+1, as in training), runs
            over positions L-1..L+k; its output at the last kept position drafts d'_1. The same layer
            applied again to its own output and the previous draft gives d'_2..d'_k (what inference
            engines do beyond the MTP depth; deeper MTP layers, when a model has them, are not used).
A row's first step has no drafts yet: it verifies placeholder drafts that are all rejected, so
that token is drawn from p_0 exactly as the plain sampler draws it.

Log-probs returned for every token are the main model's (those of the verification forward), so
GRPO's importance ratios mean what they did. The uniforms of acceptance, the residual draw and the
draft draw (inverse CDF: one uniform per row) are keyed by (seed, row key, position in the
completion), like the plain sampler's, in separate streams: samples do not depend on the slot, the
batch or the layout. Under PP the last stage accepts and drafts, then broadcasts the step's tokens to
the other stages; under EP ranks without rows join every draft forward with an empty one.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from r1mega.inference.continuous import ContinuousBatcher, _Row, table_with_row
from r1mega.inference.paged_cache import NULL_BLOCK, BlockPool, decode_view, prefill_view
from r1mega.inference.sampling import (
    _global_argmax, _mix, _signed, gumbel_noise, log_softmax_at, row_keys, sampler_support, uniform_noise,
)
from r1mega.parallel.comm import all_gather_nograd, all_reduce_values
from r1mega.parallel.layout import ParallelState

SPECULATIVE_METHODS = ("mtp",)
# drafts per row and step: acceptance compounds (k drafts all pass with probability alpha^k) while the
# verification forward and each row's draft distributions [k, V] grow with k, so more never pays
MAX_DRAFT_TOKENS = 16
ACCEPT_COLUMN = -1  # the acceptance uniform's noise column: no vocabulary id uses it
_DRAFT_STREAM = _signed(0xA0761D6478BD642F)  # the draft's noise: another stream of the same keys


def check_draft_model(model_cfg, key: str) -> None:
    """The MTP draft needs MTP layers: a clear error naming `key` (the config key or flag asking for it)."""
    from r1mega.errors import ConfigError
    from r1mega.models.family import family_of_config

    why = family_of_config(model_cfg).draft_refusal(model_cfg)
    if why is not None:
        raise ConfigError(key, f"speculative decoding with the MTP draft needs MTP layers, but {why}")


# ---- the distributions and the accept/reject rule ------------------------------------------------

def processed_probs(logits: torch.Tensor, ps: ParallelState, temperature: float, top_p: float, top_k: int,
                    vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V/tp] -> (scaled logits masked to the sampler's support, probabilities [n, V/tp]
    normalised over the whole vocabulary): the distribution the plain sampler draws from."""
    scaled = logits.float() / temperature
    keep = sampler_support(scaled, ps, top_p, top_k, vocab)
    masked = scaled.masked_fill(~keep, float("-inf"))
    group = ps.g("tp")
    gmax = all_reduce_values(masked.max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
    e = (masked - gmax[:, None]).exp()
    return masked, e / all_reduce_values(e.sum(-1), group)[:, None]


def prob_at(probs: torch.Tensor, tokens: torch.Tensor, start: int, group) -> torch.Tensor:
    """probs [n, V/tp] (a shard) at global ids tokens [n] -> [n], the same on every TP rank."""
    local = tokens - start
    inside = (local >= 0) & (local < probs.shape[-1])
    picked = probs.gather(1, local.clamp(0, probs.shape[-1] - 1)[:, None])[:, 0].masked_fill(~inside, 0.0)
    return all_reduce_values(picked, group)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """One draw per row from probs [b, V/tp] (a shard of normalised rows) with uniforms u [b]: the
    first id whose cumulative probability passes u (the shards' totals put the shards in order).
    One uniform per row instead of one per vocabulary entry (the Gumbel draw's hashing)."""
    group, n_local = ps.g("tp"), probs.shape[-1]
    start = ps.r("tp") * n_local
    csum = probs.double().cumsum(-1)
    total = csum[:, -1]
    before = torch.zeros_like(total)
    if group is not None:
        totals = all_gather_nograd(total[None].contiguous(), group)  # [tp, b]
        before = totals[:ps.r("tp")].sum(0)
        total = totals.sum(0)
    target = u * total - before
    inside = (target >= 0) & (target < csum[:, -1])
    idx = torch.searchsorted(csum, target[:, None].contiguous(), right=True)[:, 0].clamp(max=n_local - 1)
    tokens = all_reduce_values(torch.where(inside, idx + start, torch.full_like(idx, -1)), group, dist.ReduceOp.MAX)
    missed = tokens < 0  # u * total rounded past the last id: take the most likely one
    if bool(missed.any()):
        tokens = torch.where(missed, _global_argmax(probs, start, group)[0], tokens)
    return tokens


def draw_drafts(logits: torch.Tensor, ps: ParallelState, temperature: float, top_p: float, top_k: int, vocab: int,
                keys: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The draft's logits [b, V/tp] -> (draft tokens [b], their distribution q [b, V/tp]; None when
    greedy). keys: the plain sampler's keys of the positions drafted (the draft stream is derived)."""
    start = ps.r("tp") * logits.shape[-1]
    real = torch.arange(start, start + logits.shape[-1], device=logits.device) < vocab
    if temperature <= 0:
        return _global_argmax(logits.float().masked_fill(~real, float("-inf")), start, ps.g("tp"))[0], None
    _, q = processed_probs(logits, ps, temperature, top_p, top_k, vocab)
    return inverse_cdf(q, uniform_noise(_mix(keys + _DRAFT_STREAM), 0, 1)[:, 0], ps), q


def verify_drafts(logits: torch.Tensor, drafts: torch.Tensor, q: Optional[torch.Tensor], has: torch.Tensor,
                  keys: torch.Tensor, ps: ParallelState, temperature: float, top_p: float, top_k: int, vocab: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The accept/reject rule. logits [k+1, b, V/tp]: the main model's at the verified positions
    (position j gives the distribution p_j of the token after [x0, d1..dj]); drafts [b, k] and their
    distributions q [b, k, V/tp] (None when greedy); has [b]: rows whose drafts are real (others
    accept none); keys [b, k+1]: the plain sampler's noise keys of completion positions t0..t0+k.
    Returns (accepted a [b], tokens [b, k+1]: d1..da then the drawn token at index a (later entries
    unused), their log-probs under the main model [b, k+1], as the plain sampler reports them)."""
    s, b, n_local = logits.shape
    k = s - 1
    group, start = ps.g("tp"), ps.r("tp") * n_local
    flat = logits.float().reshape(s * b, n_local)
    rows = torch.arange(b, device=logits.device)
    if temperature <= 0:
        real = torch.arange(start, start + n_local, device=logits.device) < vocab
        best = _global_argmax(flat.masked_fill(~real, float("-inf")), start, group)[0].view(s, b)
        ok = has[:, None] & (drafts == best[:k].t())  # [b, k]
        a = ok.long().cumprod(1).sum(1)
        tokens = best.t().contiguous()  # accepted drafts equal the argmax they are compared with
        return a, tokens, log_softmax_at(flat, tokens.t().reshape(-1), start, group).view(s, b).t()
    masked, p = processed_probs(flat, ps, temperature, top_p, top_k, vocab)
    masked, p = masked.view(s, b, n_local), p.view(s, b, n_local)
    if k:
        p_d = prob_at(p[:k].reshape(k * b, n_local), drafts.t().reshape(-1), start, group).view(k, b).t()
        q_d = prob_at(q.transpose(0, 1).reshape(k * b, n_local), drafts.t().reshape(-1), start, group).view(k, b).t()
        u = uniform_noise(keys[:, :k].reshape(-1), ACCEPT_COLUMN, 1).view(b, k).to(torch.float64)
        ok = has[:, None] & (u * q_d.double() < p_d.double())  # u < p/q: accepted with prob min(1, p/q)
        a = ok.long().cumprod(1).sum(1)
    else:
        a = torch.zeros(b, dtype=torch.long, device=logits.device)
    # the token at index a: from the residual max(0, p_a - q_{a+1}) after a rejection, else from p_a
    # (the plain sampler's own scores, so a row without drafts draws exactly the plain sample)
    rejected = has & (a < k)
    score = masked[a, rows]
    if bool(rejected.any()):
        qa = q[rows, a.clamp(max=k - 1)]
        w = (p[a, rows] - qa).clamp(min=0)
        total = all_reduce_values(w.sum(-1), group)
        residual = rejected & (total > 0)  # total is 0 only when p = q, which never rejects
        score = torch.where(residual[:, None], w.log(), score)
    key_a = keys[rows, a]
    drawn = _global_argmax(score + gumbel_noise(key_a, start, n_local), start, group)[0]
    tokens = torch.cat([drafts, drafts[:, :1]], 1) if k else drafts.new_zeros(b, 1)
    tokens[rows, a] = drawn
    logp = log_softmax_at((logits.float() / temperature).reshape(s * b, n_local), tokens.t().reshape(-1), start,
                          group).view(s, b).t()
    return a, tokens, logp


# ---- the engine ----------------------------------------------------------------------------------

class SpeculativeBatcher(ContinuousBatcher):
    """The continuous batcher whose decoding step drafts with the MTP module and verifies k+1 positions.
    Per-row draft state lives in buffers indexed by the row's slot (no per-row tensors to gather)."""
    one_token_steps = False
    keeps_hidden = True
    # a preempted row is prefilled again whole: the same forward rebuilds its draft layer's cache
    keeps_prompt_blocks = False

    def __init__(self, model, ps: ParallelState, prompts, keys, gen):
        if gen.speculative not in SPECULATIVE_METHODS:
            raise ValueError(f"generation: speculative={gen.speculative!r}; known: {', '.join(SPECULATIVE_METHODS)}")
        check_draft_model(model.cfg, "speculative")
        if not 1 <= gen.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"generation: draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, got {gen.draft_tokens}")
        self.k = k = gen.draft_tokens
        self.step_positions = k + 1  # a step verifies x0 and k drafts: the budget counts their positions
        super().__init__(model, ps, prompts, keys, gen)
        self.had_drafts: dict[int, bool] = {}  # preempted row index -> whether it had drafts to verify
        self.drafted = self.accepted = self.draft_forwards = 0
        self.hidden = None
        # every stage: each slot's drafts [k] and whether they are real (a new row has none yet)
        self.drafts = torch.zeros(self.max_rows, k, dtype=torch.long, device=self.device)
        self.has = torch.zeros(self.max_rows, dtype=torch.bool, device=self.device)
        if model.is_last:
            self.mtp_id = model.draft_layer()
            parts, self.mtp_layer_view = model.paged_kv_layout([self.mtp_id])
            self.mtp_pool = BlockPool(parts, self.bs, self.dtype, self.device)
            self.mtp_table = torch.zeros(self.max_rows, 16, dtype=torch.long, device=self.device)
            self.mtp_blocks: dict[int, list] = {}  # row index -> the MTP layer's cache blocks
            self.groupstate: dict[int, tuple[list, torch.Tensor]] = {}  # id(group) -> (MTP blocks, h_last)
            # each slot's main hidden at its last cached position [D], and its drafts' distributions
            self.h_last = torch.zeros(self.max_rows, model.hidden_size, dtype=self.dtype, device=self.device)
            self.q = None
            if gen.temperature > 0:
                n_local = model.lm_head.weight.shape[0]
                self.q = torch.zeros(self.max_rows, k, n_local, device=self.device)

    # ---- blocks ------------------------------------------------------------------------------
    def _resize(self, pool: BlockPool, blocks: list, tokens: int) -> bool:
        """`blocks` hold exactly `tokens` positions' worth; True when blocks were added."""
        need = -(-tokens // self.bs)
        if len(blocks) > need:
            pool.release(blocks[need:])
            del blocks[need:]
        elif len(blocks) < need:
            blocks.extend(pool.alloc() for _ in range(need - len(blocks)))
            return True
        return False

    def _fit(self, r: _Row, tokens: int) -> None:
        """The row's main blocks hold exactly `tokens` positions' worth (at least its cached ones)."""
        if self._resize(self.pool, r.blocks, tokens):
            self._set_table(r)

    def _fit_mtp(self, r: _Row, tokens: int) -> None:
        if self._resize(self.mtp_pool, self.mtp_blocks[r.index], tokens):
            self.mtp_table = table_with_row(self.mtp_table, r.slot, self.mtp_blocks[r.index])

    def retire(self, r: _Row) -> None:
        if self.model.is_last and r.index in self.mtp_blocks:
            self.mtp_pool.release(self.mtp_blocks.pop(r.index))
        super().retire(r)

    # ---- preemption --------------------------------------------------------------------------
    def requeue(self, r: _Row) -> None:
        """A preempted row remembers whether it had drafts: re-admitted, it gets the same ones back."""
        self.had_drafts[r.index] = bool(self.has[r.slot])
        super().requeue(r)

    def drop_group(self, g) -> None:
        if self.model.is_last and id(g) in self.groupstate:
            self.mtp_pool.release(self.groupstate.pop(id(g))[0])
        super().drop_group(g)

    def plan_resume(self, r: _Row) -> None:  # kept nothing: its recomputed sequence is prefilled again
        r.start, r.tail = 0, None

    def redrafts(self, resumed: list[_Row]) -> int:
        return int(any(self.had_drafts.get(r.index, False) for r in resumed))

    def reprefilled(self, rows, groups, redraft: int = 0) -> None:
        """Re-admitted rows, prefilled again (main model and draft layer over their recomputed tokens):
        each takes its sequence's draft cache and last hidden; one that had drafts when preempted draws
        them again as its last step did (the draft layer at its last cached position, reading the token
        it feeds next, then the chain; noise keyed by position), so its next verification accepts what
        it would have. redraft: whether any rank of the step group draws (the others join emptily)."""
        super().reprefilled(rows, groups)
        if rows:
            slots = torch.tensor([r.slot for r in rows], dtype=torch.long, device=self.device)
            had = [self.had_drafts.pop(r.index, False) for r in rows]
            self.has[slots] = torch.tensor(had, dtype=torch.bool, device=self.device)
            if self.model.is_last:
                h_last = []
                for r, g in zip(rows, groups):
                    blocks, h = self.groupstate.pop(id(g))
                    self.mtp_blocks[r.index] = blocks
                    self.mtp_table = table_with_row(self.mtp_table, r.slot, blocks)
                    h_last.append(h)
                self.h_last[slots] = torch.stack(h_last)
            rows = [r for r, h in zip(rows, had) if h]
        if redraft:
            self._redraft(rows)

    def _redraft(self, rows: list[_Row]) -> None:
        """Drafts [k] of rows whose cache holds L tokens and whose next fed token is out[-1] (last stage;
        broadcast to the other stages): the draft layer's entry at L-1 (h_last, out[-1]) drafts d'_1,
        its chain the rest; k draft forwards, empty ones where this rank has no rows."""
        if not rows:
            if self.model.is_last:
                for _ in range(self.k):
                    self._empty_mtp()
            return
        slots = torch.tensor([r.slot for r in rows], dtype=torch.long, device=self.device)
        drafts = torch.zeros(len(rows), self.k, dtype=torch.long, device=self.device)
        if self.model.is_last:
            for r in rows:
                self._fit_mtp(r, r.length + 2 * self.k)
            lengths = torch.tensor([r.length for r in rows], dtype=torch.long, device=self.device)
            table = self.mtp_table[slots]
            view = decode_view(self.mtp_pool, self.mtp_layer_view, table, lengths - 1)
            x0 = torch.tensor([[r.out[-1]] for r in rows], dtype=torch.long, device=self.device)
            h = self._mtp_forward(self.h_last[slots][None], x0, (lengths - 1)[:, None], view)[0]
            t_last = torch.tensor([len(r.out) - 1 for r in rows], dtype=torch.long, device=self.device)
            rowkey = torch.tensor([r.key for r in rows], dtype=torch.long, device=self.device)
            drafts = self._draft_chain(h, table, lengths, slots, t_last, rowkey)
        if self.ps.pp > 1:
            dist.broadcast(drafts, src=self.pp_ranks[-1], group=self.ps.g("pp"))
        self.drafts[slots] = drafts

    # ---- forwards ----------------------------------------------------------------------------
    def _mtp_forward(self, h_prev, next_ids, pos, view):
        """The MTP layer over h_prev [s, b, D] and the embeddings of next_ids [b, s] at positions pos
        [b, s] on its own cache -> its output [s, b, D]."""
        self.draft_forwards += 1
        return self.model.draft_forward(h_prev, next_ids, pos, view.layer(self.mtp_id))

    def _mtp_logits(self, h):
        """The shared head over the MTP output h [..., D] (only the positions that draft)."""
        return self.model.draft_logits(h)

    def _empty_mtp(self) -> None:
        view = decode_view(self.mtp_pool, self.mtp_layer_view, torch.full((1, 1), NULL_BLOCK, device=self.device),
                           torch.zeros(1, dtype=torch.long, device=self.device))
        zero = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._mtp_forward(torch.zeros(1, 1, self.model.hidden_size, dtype=self.dtype, device=self.device), zero,
                          zero, view)

    def empty_decode(self) -> None:
        self.empty_forward()
        if self.model.is_last:
            for _ in range(self.k):
                self._empty_mtp()

    def empty_prefill(self) -> None:
        self.empty_forward()
        if self.model.is_last:
            self._empty_mtp()

    # ---- prompts -----------------------------------------------------------------------------
    def prefill(self, groups) -> None:
        """The main prefill, then (last stage) the MTP layer over each prompt's positions 0..p-2 (entry i
        reads h_i and token i+1; position p-1 waits for the sampled first token)."""
        super().prefill(groups)
        if not self.model.is_last:
            return
        hidden = self.hidden  # [s, b, D] final-normed, left-padded prompts
        s = hidden.shape[0]
        for j, g in enumerate(groups):
            blocks = [self.mtp_pool.alloc() for _ in range(-(-(len(g.prompt) - 1) // self.bs))]
            self.groupstate[id(g)] = (blocks, hidden[-1, j].clone())
        if s == 1:  # one-token prompts only: no entry before the sampled token
            self._empty_mtp()
            return
        ids = torch.stack([torch.tensor([0] * (s - len(g.prompt)) + g.prompt, dtype=torch.long) for g in groups]
                          ).to(self.device)
        pad = torch.tensor([s - len(g.prompt) for g in groups], dtype=torch.long, device=self.device)
        view = prefill_view(self.mtp_pool, self.mtp_layer_view, [self.groupstate[id(g)][0] for g in groups], pad, s - 1)
        pos = (torch.arange(s - 1, device=self.device)[None, :] - pad[:, None]).clamp(min=0)
        self._mtp_forward(hidden[:-1], ids[:, 1:], pos, view)

    def start(self, new) -> None:
        """New rows have no drafts yet; each gets its copy of its prompt's MTP entries (the last sample
        takes the group's own) and the prompt's last hidden."""
        slots = torch.tensor([r.slot for r in new], dtype=torch.long, device=self.device)
        self.has[slots] = False
        if self.model.is_last:
            remaining: dict[int, int] = {}
            src, dst, h_last = [], [], []
            for r in new:
                g = r.group
                left = remaining[id(g)] = remaining.get(id(g), g.waiting) - 1
                blocks, h = self.groupstate[id(g)]
                if left == 0:
                    mine = blocks
                    del self.groupstate[id(g)]
                else:
                    mine = [self.mtp_pool.alloc() for _ in blocks]
                    src += blocks
                    dst += mine
                self.mtp_blocks[r.index] = mine
                h_last.append(h)
            self.mtp_pool.copy_blocks(src, dst)
            self.h_last[slots] = torch.stack(h_last)
        super().start(new)
        if self.model.is_last:
            for r in new:
                if r.index in self.mtp_blocks:  # not retired at its first token
                    self.mtp_table = table_with_row(self.mtp_table, r.slot, self.mtp_blocks[r.index])

    # ---- the speculative step ----------------------------------------------------------------
    def decode(self) -> None:
        live, k = self.live, self.k
        s, b = k + 1, len(live)
        for r in live:
            self._fit(r, r.length + s)
        slots = torch.tensor([r.slot for r in live], dtype=torch.long, device=self.device)
        lengths = torch.tensor([r.length for r in live], dtype=torch.long, device=self.device)
        has, drafts = self.has[slots], self.drafts[slots]
        ids = torch.cat([torch.tensor([[r.out[-1]] for r in live], dtype=torch.long, device=self.device), drafts], 1)
        view = decode_view(self.pool, self.layer_view, self.table[slots], lengths, s)
        pos = lengths[:, None] + torch.arange(s, device=self.device)
        logits = self._forward(ids, pos, view, all_logits=True)
        self.decode_row_steps += b
        t0 = torch.tensor([len(r.out) for r in live], dtype=torch.long, device=self.device)
        rowkey = torch.tensor([r.key for r in live], dtype=torch.long, device=self.device)
        result = torch.zeros(b, 1 + 2 * s + k, dtype=torch.float64, device=self.device)  # a, tokens, log-probs, drafts
        if logits is not None:
            a, tokens, logp = self._accept(logits, drafts, has, slots, t0, rowkey)
            nxt = self._draft(live, ids, tokens, a, lengths, slots, t0, rowkey)
            result = torch.cat([a[:, None].double(), tokens.double(), logp.double(), nxt.double()], 1)
        if self.ps.pp > 1:
            dist.broadcast(result, src=self.pp_ranks[-1], group=self.ps.g("pp"))
        a = result[:, 0].long()
        self.drafts[slots] = result[:, 1 + 2 * s:].long()
        self.has[slots] = True
        self.drafted += int(has.sum()) * k
        self.accepted += int(a[has].sum())
        kept = self._commit(live, a.tolist(), result[:, 1:1 + s].long().tolist(),
                            result[:, 1 + s:1 + 2 * s].float().tolist())
        if self.gen.record_routing:
            sel = torch.arange(s, device=self.device)[:, None] < kept[None, :]  # [s, b] inputs of kept tokens
            jj, bb = sel.nonzero(as_tuple=True)
            rows = torch.tensor([r.index for r in live])[bb.cpu()]
            at = (t0 - 1)[bb] + jj
            for layer, idx in view.routing.items():
                self.decode_routing.setdefault(layer, []).append((rows, at.cpu(), idx[jj, bb]))

    def _accept(self, logits, drafts, has, slots, t0, rowkey):
        k, gen = self.k, self.gen
        steps = t0[:, None] + torch.arange(k + 1, device=self.device)
        keys = row_keys(gen.seed, steps.reshape(-1), rowkey.repeat_interleave(k + 1)).view(-1, k + 1)
        q = self.q[slots] if self.q is not None else None
        return verify_drafts(logits, drafts, q, has, keys, self.ps, gen.temperature, gen.top_p, gen.top_k, self.vocab)

    def _draft(self, live, ids, tokens, a, lengths, slots, t0, rowkey) -> torch.Tensor:
        """The next step's drafts [b, k] (last stage): the MTP layer over positions L-1..L+k, its output
        at the last kept position L+a drafts d'_1; then k-1 more one-token steps on its own output."""
        k, b = self.k, len(live)
        rows = torch.arange(b, device=self.device)
        for r in live:
            self._fit_mtp(r, r.length + 2 * k)
        table = self.mtp_table[slots]
        h_prev = torch.cat([self.h_last[slots][None], self.hidden], 0)  # [k+2, b, D]
        next_ids = torch.cat([ids[:, :1], tokens], 1)  # token i+1 of each entry i = L-1..L+k
        pos = (lengths - 1)[:, None] + torch.arange(k + 2, device=self.device)
        view = decode_view(self.mtp_pool, self.mtp_layer_view, table, lengths - 1, k + 2)
        h = self._mtp_forward(h_prev, next_ids, pos, view)[a + 1, rows]  # at position L + a
        self.h_last[slots] = self.hidden[a, rows]
        return self._draft_chain(h, table, lengths + a + 1, slots, t0 + a, rowkey)

    def _draft_chain(self, h, table, kept, slots, t_last, rowkey) -> torch.Tensor:
        """Drafts [b, k] from the draft layer's output h [b, D] at each row's last cached position
        (kept - 1; t_last: the completion index of the token fed next): d'_1 from h, then k-1 one-token
        steps on the layer's own output and the previous draft; their distributions kept in self.q."""
        gen = self.gen
        logits = self._mtp_logits(h)
        out = []
        for j in range(1, self.k + 1):
            if j > 1:  # entry at position kept + j - 2 reads the layer's own output and the previous draft
                view = decode_view(self.mtp_pool, self.mtp_layer_view, table, kept + j - 2)
                h = self._mtp_forward(h[None], out[-1][:, None], (kept + j - 2)[:, None], view)[0]
                logits = self._mtp_logits(h)
            keys = row_keys(gen.seed, t_last + j, rowkey)
            d, q = draw_drafts(logits, self.ps, gen.temperature, gen.top_p, gen.top_k, self.vocab, keys)
            out.append(d)
            if q is not None:
                self.q[slots, j - 1] = q
        return torch.stack(out, 1)

    def _commit(self, live, a, tokens, logp) -> torch.Tensor:
        """Append each row's new tokens (up to its end), roll its cache back to them; the kept counts [b]."""
        still, kept = [], []
        for r, n_new, toks, lps in zip(live, a, tokens, logp):
            n, done = 0, False
            for t, lp in zip(toks[:n_new + 1], lps[:n_new + 1]):
                r.out.append(t)
                r.logps.append(lp)
                n += 1
                if self.finished(r, t):
                    done = True
                    break
            kept.append(n)
            r.length += n
            if done:
                self.retire(r)
                continue
            # rollback: blocks past the next step's positions go (the next step allocates what it
            # needs past them, after preemption has made room for it: the budget holds mid-step)
            del_from = -(-(r.length + self.k + 1) // self.bs)
            if len(r.blocks) > del_from:
                self.pool.release(r.blocks[del_from:])
                del r.blocks[del_from:]
            if self.model.is_last:
                self._fit_mtp(r, r.length + 2 * self.k)
            still.append(r)
        self.live = still
        return torch.tensor(kept, dtype=torch.long, device=self.device)
