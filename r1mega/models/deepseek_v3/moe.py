"""DeepSeekMoE: a router, shared experts (a TP-sharded dense FFN) and routed experts (EP + expert-TP).

The routed path works on tokens that are distinct on every rank of a pipeline stage: under SP
the residual stream is already sequence-sharded; without SP each TP rank takes its 1/tp slice
of the (replicated) tokens and the outputs are all-gathered back.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1mega.models.deepseek_v3.config import ModelConfig
from r1mega.kernels import active_backend, batch_invariant, grouped_linear
from r1mega.kernels.linear import TorchBackend
from r1mega.models.ffn import SwiGLU
from r1mega.parallel.recompute import recomputed
from r1mega.parallel.comm import all_gather_nograd, gather_dim0, reduce_from_group, split_dim0
from r1mega.parallel.expert_dispatch import AllToAllDispatcher, count_per_expert
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import tag


class Router(nn.Module):
    """Top-k expert choice. V3: sigmoid scores, group score = sum of a group's top-2 biased scores,
    `e_score_correction_bias` used for selection only (aux-loss-free balancing). V2: softmax
    scores, greedy or group-limited greedy (group score = max)."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.cfg = cfg
        self.weight = tag(nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size)), tp_partial="region")
        nn.init.normal_(self.weight, std=cfg.initializer_range)
        # only sigmoid (aux-loss-free) routing carries the selection bias
        bias = torch.zeros(cfg.n_routed_experts, dtype=torch.float32) if cfg.scoring_func == "sigmoid" else None
        self.register_buffer("e_score_correction_bias", bias)

    @staticmethod
    def _sigmoid(logits: torch.Tensor, exact: bool) -> torch.Tensor:
        return batch_invariant.sigmoid(logits) if exact else logits.sigmoid()

    def _group_dropped(self, choice: torch.Tensor, group_score) -> torch.Tensor:
        """bool [T, E]: experts outside each token's top groups."""
        cfg = self.cfg
        grouped = choice.view(choice.shape[0], cfg.n_group, -1)
        top_groups = group_score(grouped).topk(cfg.topk_group, dim=-1, sorted=False).indices
        drop = torch.ones(grouped.shape[:2], dtype=torch.bool, device=choice.device)
        drop.scatter_(1, top_groups, False)
        return drop.unsqueeze(-1).expand_as(grouped).reshape_as(choice)

    def forward(self, x: torch.Tensor, forced_idx: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, D] -> (topk_idx [T, k], topk_weight [T, k] float32, scores [T, E] float32).
        forced_idx replays a recorded choice of experts; their weights still come from the scores."""
        cfg = self.cfg
        exact = batch_invariant.enabled()
        f32 = lambda t: t if t.dtype == torch.float32 else t.float()  # noqa: E731  (no dispatch for a no-op cast)
        logits = (batch_invariant.linear if exact else F.linear)(f32(x), f32(self.weight))
        k = cfg.num_experts_per_tok
        if forced_idx is not None:
            scores = self._sigmoid(logits, exact) if cfg.scoring_func == "sigmoid" else logits.softmax(dim=-1)
            idx, weight = forced_idx, scores.gather(1, forced_idx)
        elif cfg.scoring_func == "sigmoid":
            scores = self._sigmoid(logits, exact)
            choice = (scores.detach() if scores.requires_grad else scores) + self.e_score_correction_bias
            if cfg.n_group > 1:
                drop = self._group_dropped(choice, lambda g: g.topk(2, dim=-1).values.sum(-1))
                choice = choice.masked_fill(drop, float("-inf"))
            idx = choice.topk(k, dim=-1, sorted=False).indices
            weight = scores.gather(1, idx)
        else:
            scores = logits.softmax(dim=-1)
            masked = scores
            if cfg.topk_method == "group_limited_greedy" and cfg.n_group > 1:
                drop = self._group_dropped(scores.detach(), lambda g: g.max(dim=-1).values)
                masked = scores.masked_fill(drop, 0.0)
            weight, idx = masked.topk(k, dim=-1, sorted=False)
        if cfg.norm_topk_prob:  # at k = 1 too, as transformers: a lone expert gets weight 1
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, weight * cfg.routed_scaling_factor, scores


# `by_choice` copies each chosen expert's weights before its GEMMs read them; the dispatcher's grouped
# GEMMs read them in place. Measured (bench/decode_throughput.py proxy, 64 experts of 1.5 MiB fp32, an
# AVX-512 CPU): 1 row (9 MiB gathered) 111 vs 87 tokens/s for by_choice, 2 rows (18 MiB) 109 vs 123,
# 8 rows (72 MiB: each gather a fresh mmap whose page faults dominate) 73 vs 372.
BY_CHOICE_MAX_BYTES = 16 * 2**20


class GroupedExperts(nn.Module):
    """This rank's routed experts as stacked weights; FFN columns split over expert-TP.
    w_gate_up [E_local, 2 * I/etp, D]: each expert's gate rows then its up rows (HF's gate_proj and
    up_proj, this rank's expert-TP slice of each), so both run as one grouped GEMM (a third fewer
    GEMM calls than separate weights, as transformers' and Megatron's fused fc1); w_down [E_local, D, I/etp]."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.num_local = cfg.n_routed_experts // ps.ep
        self.first_expert = ps.r("ep") * self.num_local
        self.inner = cfg.moe_intermediate_size // ps.etp
        D, std = cfg.hidden_size, cfg.initializer_range

        def param(*shape, shard_dim):
            p = nn.Parameter(torch.empty(*shape))
            nn.init.normal_(p, std=std)
            return tag(p, is_expert=True, etp_shard_dim=shard_dim)

        self.w_gate_up = param(self.num_local, 2 * self.inner, D, shard_dim=1)
        self.w_down = param(self.num_local, D, self.inner, shard_dim=2)

    recompute: frozenset = frozenset()  # "moe_act" (parallel/recompute.py)

    def forward(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """rows [N, D] grouped by local expert with `counts` rows each -> [N, D] (partial over etp)."""
        offsets = counts.cumsum(0).to(torch.int32)
        gate_up = grouped_linear(rows, self.w_gate_up, offsets)
        return recomputed("moe_act" in self.recompute, self._act_down, gate_up, offsets)

    def _act_down(self, gate_up: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.split(self.inner, dim=-1)
        act = batch_invariant.silu if batch_invariant.enabled() else F.silu
        return grouped_linear(act(gate) * up, self.w_down, offsets)

    def few_rows_usable(self, choices: int, ps: ParallelState) -> bool:
        """Inference with every expert on this rank (no EP, no expert-TP), plain torch kernels, at
        most one (token, expert) choice per local expert, and gathered weights small enough to copy:
        `by_choice` then runs a handful of ops instead of a sort, a plan and two grouped GEMMs."""
        if torch.is_grad_enabled() or ps.ep != 1 or ps.etp != 1:
            return False
        # a compiled decoding step takes it at any count its bytes allow: the dispatcher's sort and
        # per-expert splits have data-dependent shapes, which would break its graph (tested first:
        # comparing the symbolic count split the step's graph at 5 rows)
        if not torch.compiler.is_compiling() and choices > self.num_local:
            return False
        if not isinstance(active_backend(), TorchBackend) or batch_invariant.enabled():
            return False
        expert_bytes = (self.w_gate_up.numel() + self.w_down.numel()) // self.num_local * self.w_gate_up.element_size()
        return choices * expert_bytes <= BY_CHOICE_MAX_BYTES

    def by_choice(self, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [T, D], idx/weight [T, k] -> sum_j weight[t, j] * expert_{idx[t, j]}(x[t]) [T, D]: each
        (token, expert) pair as one row of a batched GEMM over its gathered expert weights."""
        T, k = idx.shape
        flat = idx.reshape(-1)
        rows = x[:, None, :].expand(T, k, x.shape[-1]).reshape(T * k, 1, -1)
        gate, up = torch.bmm(rows, self.w_gate_up.index_select(0, flat).transpose(1, 2)).split(self.inner, -1)
        out = torch.bmm(F.silu(gate) * up, self.w_down.index_select(0, flat).transpose(1, 2))  # [T*k, 1, D]
        out = (out.view(T, k, -1) * weight[..., None]).sum(1)
        return out if out.dtype == x.dtype else out.to(x.dtype)


class _AttachAuxLoss(torch.autograd.Function):
    """Return `out` unchanged; in backward, give `aux` (already scaled) a gradient of one. This puts
    a layer's balance loss into the backward pass wherever the layer sits in the pipeline."""

    @staticmethod
    def forward(ctx, out, aux):
        ctx.save_for_backward(aux)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        (aux,) = ctx.saved_tensors
        return grad, torch.ones_like(aux)


class MoE(nn.Module):
    recompute: frozenset = frozenset()  # "shared_experts" (parallel/recompute.py)

    def _whole_sequence_routing(self, idx: torch.Tensor, n: int, b: int) -> torch.Tensor:
        """Every token's experts [s, b, k] from this rank's part (gathered over TP when split or SP).
        TP ranks hold consecutive slices of the token order, padding only at the very end."""
        if self.ps.tp > 1:
            idx = all_gather_nograd(idx.contiguous(), self.ps.g("tp"))
        return idx[:n * (self.ps.tp if self.ps.sp else 1)].view(-1, b, idx.shape[1])

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.cfg, self.ps = cfg, ps
        self.gate = Router(cfg, ps)
        self.experts = GroupedExperts(cfg, ps)
        self.dispatcher = AllToAllDispatcher(cfg.n_routed_experts, ps)
        self.shared_experts = (
            SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts, ps, cfg.initializer_range)
            if cfg.n_shared_experts else None
        )
        # training statistics, read and reset by r1mega.models.deepseek_v3.balance
        # integer counts: a model cast to bf16 must not round them (module.to leaves ints alone)
        self.register_buffer("expert_load", torch.zeros(cfg.n_routed_experts, dtype=torch.long), persistent=False)
        self.aux_loss_scale = 0.0  # alpha / global number of sequences, set per step
        # scaled balance loss summed over this step's microbatches (float32, on the device: a
        # float() here would stall every MoE layer of every microbatch); read once per step
        self.aux_loss_sum: Optional[torch.Tensor] = None
        self.last_topk_idx: Optional[torch.Tensor] = None  # this rank's routing (real tokens)
        self.recomputing = False  # set while a full-layer recompute re-runs this forward

    def _seq_balance_loss(self, scores, idx, seq_of_token, num_seqs: int, split: bool,
                          counted: Optional[torch.Tensor] = None):
        """DeepSeek-V3's sequence-wise balance loss: sum_i f_i P_i per sequence, summed over sequences.
        Only the first len(seq_of_token) rows of scores/idx are real tokens (the rest is TP padding).
        counted: bool [len(seq_of_token)], the tokens that belong to a sequence (None: all; pad slots
        are not, `stage.load_counted`): a sequence's T is its counted tokens, not its padded length."""
        E, K = self.cfg.n_routed_experts, self.cfg.num_experts_per_tok
        n_real = seq_of_token.shape[0]
        seq, scores, idx = seq_of_token, scores[:n_real], idx[:n_real]
        probs = scores / scores.sum(-1, keepdim=True)
        w = probs.new_ones(n_real) if counted is None else counted.to(probs.dtype)
        psum = torch.zeros(num_seqs, E, dtype=probs.dtype, device=probs.device).index_add(0, seq, probs * w[:, None])
        # hits[seq, e] += 1 per counted choice, and a last column of counted tokens per sequence (its T, summed
        # over the ranks with the hits); flat indices instead of one_hot, which checks its range on the host
        at = torch.cat([(seq.unsqueeze(1) * (E + 1) + idx).reshape(-1), seq * (E + 1) + E])
        ones = torch.cat([w[:, None].expand(idx.shape).reshape(-1), w])
        hits = torch.zeros(num_seqs * (E + 1), dtype=probs.dtype, device=probs.device).index_add_(
            0, at, ones).view(num_seqs, E + 1)
        if split or self.ps.sp:  # each TP rank saw part of every sequence
            hits = reduce_from_group(hits, self.ps.g("tp"))
            psum = reduce_from_group(psum, self.ps.g("tp"))
        if self.ps.cp > 1:  # and each CP rank its zigzag chunks
            hits = reduce_from_group(hits, self.ps.g("cp"))
            psum = reduce_from_group(psum, self.ps.g("cp"))
        length = hits[:, E:].detach().clamp(min=1)  # [num_seqs, 1]
        f = hits[:, :E].detach() * E / (K * length)
        return (f * psum / length).sum()

    def forward(self, x: torch.Tensor, cache=None, replay: Optional[torch.Tensor] = None,
                counted: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [s_local, b, D]. cache: a KVCache slot that records the experts chosen per token
        (rollout); replay: recorded experts [s, b, k] to reuse instead of choosing (routing replay);
        counted: bool [b, s], the tokens whose choices count as expert load in training (None: all;
        `stage.load_counted`)."""
        tokens = x.reshape(-1, x.shape[-1])
        n = tokens.shape[0]
        b = x.shape[1]
        split = self.ps.tp > 1 and not self.ps.sp
        # token t = (position t // b, sequence t % b); not needed by a plain inference forward
        need_flat = split or self.ps.sp or replay is not None or self.training
        flat = torch.arange(n, device=x.device) if need_flat else None
        if self.ps.sp:
            flat = flat + self.ps.r("tp") * n  # index in the whole sequence
        if split:  # replicated tokens: each TP rank routes its own slice (padded to divide evenly)
            pad = (-n) % self.ps.tp
            if pad:
                tokens = F.pad(tokens, (0, 0, 0, pad))
                flat = F.pad(flat, (0, pad), value=-1)
            tokens = split_dim0(tokens, self.ps.g("tp"))
            flat = flat.chunk(self.ps.tp)[self.ps.r("tp")]
        # TP padding sits at the end of the last ranks' slices: this rank's real tokens are its first
        # n_real rows, known on the host (boolean masks would cost a device sync)
        n_real = max(0, min(tokens.shape[0], n - self.ps.r("tp") * tokens.shape[0])) if split else n
        forced = None
        if replay is not None:
            forced = replay.reshape(-1, replay.shape[-1])[flat.clamp(min=0)].long()  # recorded as uint8 / int32
        idx, weight, scores = self.gate(tokens, forced)
        self.last_topk_idx = idx if n_real == idx.shape[0] else idx[:n_real]  # (integer: nothing to detach)
        if cache is not None:
            cache.record_routing(self._whole_sequence_routing(idx, n, b))
        if self.experts.few_rows_usable(idx.numel(), self.ps):  # decoding a few rows
            routed = self.experts.by_choice(tokens, idx, weight)
        else:
            routed = self.dispatcher(tokens, idx, weight, self.experts)
        if self.training:
            mine = None if counted is None else counted.t().reshape(-1)[flat[:n_real]]  # this rank's tokens
            if not self.recomputing:  # statistics count each forward once, not again in recompute
                self.expert_load += count_per_expert(self.last_topk_idx, self.cfg.n_routed_experts, mine)
            if self.aux_loss_scale > 0:
                seq_of_token = flat[:n_real] % b
                aux = self._seq_balance_loss(scores, idx, seq_of_token, b, split, mine) * self.aux_loss_scale
                if not self.recomputing:
                    total = aux.detach().float()
                    self.aux_loss_sum = total if self.aux_loss_sum is None else self.aux_loss_sum + total
                routed = _AttachAuxLoss.apply(routed, aux)
        if split:
            routed = gather_dim0(routed, self.ps.g("tp"))[:n]
        out = routed.view_as(x)
        if self.shared_experts is not None:
            out = out + recomputed("shared_experts" in self.recompute, self.shared_experts, x)
        return out
