"""Routed-expert token dispatch: all-to-all over EP, all-gather over expert-TP, and back.

Each rank brings its own tokens (distinct across the tp x dp ranks of a pipeline stage). Experts
are owned in contiguous blocks: EP rank j holds experts [j*E/ep, (j+1)*E/ep). With expert-TP
(MoE parallel folding) every expert's FFN columns are split over `etp` ranks, which therefore all
see the same tokens (all-gather in) and sum their partial outputs (reduce-scatter out).

    tokens [T, D] --sort by expert--> [T*k, D] --all-to-all(ep)--> --all-gather(etp)-->
    grouped expert FFN --reduce-scatter(etp)--> --all-to-all(ep)--> weighted scatter-add [T, D]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.parallel.comm import all_gather_nograd, all_gather_sizes, all_to_all, gather_uneven, reduce_scatter_uneven
from r1mega.parallel.layout import ParallelState


def count_per_expert(topk_idx: torch.Tensor, num_experts: int, counted: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Choices per expert (int64 [num_experts]) of the tokens [T, k] (counted: bool [T], those to count;
    None: all). bincount sizes its output from the data's max, which makes the host wait for the
    device; a fixed-size scatter-add does not (nor a weight in place of a boolean index)."""
    flat = topk_idx.reshape(-1)
    ones = torch.ones_like(flat) if counted is None else counted[:, None].expand(topk_idx.shape).reshape(-1).long()
    return torch.zeros(num_experts, dtype=torch.long, device=flat.device).index_add_(0, flat, ones)


@dataclass
class DispatchPlan:
    order: torch.Tensor  # permutation of the T*k (token, slot) pairs, grouped by global expert
    send_splits: list[int]  # rows sent to each EP rank
    recv_splits: list[int]  # rows received from each EP rank
    etp_sizes: list[int]  # rows each expert-TP rank holds after the all-to-all
    local_expert_counts: torch.Tensor  # rows per local expert, in the gathered order


class AllToAllDispatcher:
    def __init__(self, num_experts: int, ps: ParallelState):
        self.ps = ps
        self.num_experts = num_experts
        self.num_local = num_experts // ps.ep
        self.ep_group, self.etp_group = ps.g("ep"), ps.g("etp")

    def _plan(self, topk_idx: torch.Tensor) -> DispatchPlan:
        flat = topk_idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = count_per_expert(flat, self.num_experts)  # per global expert
        per_src = counts.view(1, self.num_experts)
        send_splits = recv_splits = [int(flat.numel())]
        if self.ep_group is not None:
            ep = self.ps.ep
            send_splits = counts.view(ep, self.num_local).sum(1).tolist()
            recv = torch.empty_like(counts)
            # counts[j*E_local:(j+1)*E_local] go to EP rank j; we receive our experts' counts from each
            dist.all_to_all_single(recv, counts, group=self.ep_group)
            per_src = recv.view(ep, self.num_local)
            recv_splits = per_src.sum(1).tolist()
        else:
            per_src = counts.view(1, self.num_local)
        etp_sizes = [sum(recv_splits)]
        if self.etp_group is not None:
            per_src = all_gather_nograd(per_src, self.etp_group)
            etp_sizes = all_gather_sizes(sum(recv_splits), self.etp_group, per_src.device)
        return DispatchPlan(order, send_splits, recv_splits, etp_sizes, per_src)

    def __call__(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                 experts: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """x [T, D], topk_idx/topk_weight [T, k]; experts(rows, rows_per_local_expert) -> rows."""
        k = topk_idx.shape[1]
        plan = self._plan(topk_idx)
        token_of = plan.order // k
        rows = x[token_of]
        rows = all_to_all(rows, plan.recv_splits, plan.send_splits, self.ep_group)
        rows = gather_uneven(rows, plan.etp_sizes, self.etp_group)
        # rows arrive grouped by (etp rank, source ep rank) then by local expert; regroup by expert
        chunk_counts = plan.local_expert_counts  # [chunks, E_local]
        if chunk_counts.shape[0] == 1:  # one source: already grouped by expert
            out = experts(rows, chunk_counts[0])
        else:
            expert_of_row = torch.repeat_interleave(
                torch.arange(self.num_local, device=x.device).repeat(chunk_counts.shape[0]),
                chunk_counts.reshape(-1),
            )
            by_expert = torch.argsort(expert_of_row, stable=True)
            out_sorted = experts(rows[by_expert], chunk_counts.sum(0))
            out = torch.empty_like(out_sorted).index_copy(0, by_expert, out_sorted)
        out = reduce_scatter_uneven(out, plan.etp_sizes, self.etp_group)
        out = all_to_all(out, plan.send_splits, plan.recv_splits, self.ep_group)
        weights = topk_weight.reshape(-1)[plan.order].unsqueeze(-1)
        combined = torch.zeros_like(x)
        return combined.index_add(0, token_of, (out * weights).to(x.dtype))
