"""Vocabulary-parallel embedding, cross-entropy and per-token log-probs.

Each TP rank holds vocab rows [rank*V/tp, (rank+1)*V/tp). Cross-entropy and log-probs are computed
from the shards with three small all-reduces (max, sum-exp, target logit), never gathering the
full [tokens, vocab] logits on one rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from r1mega.parallel.comm import Group
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.tensor_parallel import leave_tp_region, tag


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int, ps: ParallelState, std: float = 0.02):
        super().__init__()
        self.ps = ps
        self.vocab_size = vocab_size
        self.per_rank = vocab_size // ps.tp
        self.start = ps.r("tp") * self.per_rank
        self.weight = tag(nn.Parameter(torch.empty(self.per_rank, dim)), tp_shard_dim=0)
        nn.init.normal_(self.weight, mean=0.0, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [s, b] (same on all TP ranks) -> [s/tp or s, b, dim] in the residual-stream layout."""
        if self.ps.tp == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return leave_tp_region(out, self.ps)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """loss_i = logsumexp(logits_i) - logits_i[target_i], logits sharded over the last dim.

    Each rank normalises its shard with one fused log_softmax; the shards' log-normalisers are
    then combined over TP with two all-reduces of one value per token, and the target's
    log-probability comes from the rank holding it. Backward is softmax - one_hot from the saved
    log-probabilities (exp, scatter, scale in place): fewer full passes over [tokens, V/tp] than
    max / subtract / exp / divide."""

    @staticmethod
    def forward(ctx, logits, target, start, group):
        logp = torch.log_softmax(logits.float(), dim=-1)  # normalised over this shard only
        n_local = logp.shape[-1]
        local_t = target - start
        outside = (local_t < 0) | (local_t >= n_local)
        local_t = local_t.masked_fill(outside, 0)
        picked = logp.gather(-1, local_t.unsqueeze(-1)).squeeze(-1)
        shift = None
        if group is not None:
            # shard log-normaliser: logits - logp is the same value in every column; column 0 serves
            lse_local = logits[..., 0].float() - logp[..., 0]
            gmax = lse_local.clone()
            dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
            sum_exp = (lse_local - gmax).exp()
            dist.all_reduce(sum_exp, group=group)
            shift = gmax + sum_exp.log() - lse_local  # global minus local log-normaliser
            picked = (picked - shift).masked_fill(outside, 0.0)
            dist.all_reduce(picked, group=group)
        ctx.save_for_backward(logp, local_t, outside, shift)
        return -picked

    @staticmethod
    def backward(ctx, grad_loss):
        logp, local_t, outside, shift = ctx.saved_tensors
        grad = (logp if shift is None else logp - shift.unsqueeze(-1)).exp()  # global softmax
        grad.scatter_add_(-1, local_t.unsqueeze(-1), -(~outside).to(grad.dtype).unsqueeze(-1))
        return grad.mul_(grad_loss.unsqueeze(-1)), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """Per-token loss [...] from vocab-sharded logits [..., V/tp]. Targets < 0 give garbage: mask them."""
    start = ps.r("tp") * logits.shape[-1]
    safe = target.clamp(min=0)
    return _VocabParallelCrossEntropy.apply(logits, safe, start, ps.g("tp"))


def vocab_parallel_log_probs(logits: torch.Tensor, target: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """log p(target) per token, differentiable, from vocab-sharded logits."""
    return -vocab_parallel_cross_entropy(logits, target, ps)


def gather_vocab(logits: torch.Tensor, group: Group) -> torch.Tensor:
    """Full logits on every rank (for tests and the HF comparison, not for training)."""
    if group is None:
        return logits
    parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)
