"""Per-token scores of the sampled tokens from vocab-sharded logits: log-probs, the policy's
entropy, and the sampler's top-p/top-k support (DeepSeek-V3.2's keep-sampling-mask), all computed
from each TP rank's vocab shard with a few all-reduces of one value per token: no rank ever holds
the full vocabulary of a token.

Keep-sampling-mask. The sampler drew each token from softmax(logits / T) truncated to a top-p/top-k
support; with rl.keep_sampling_mask the old, current and reference policies are renormalised over
that same support in training, so all three act over the same tokens. Rollouts run on the very
weights being trained, so the support is recomputed here from the old policy's logits with the
rollout's top_p/top_k (the sampler's rule, `sampler_support`), once, at old-log-prob time, and kept
(as the flat indices of its vocab-shard entries) for the reference and every update of the rollout.
It can differ from the sampler's own support only where the training forward's logits differ from
the decoding forward's in the last bits at a threshold (tests/test_grpo_refinements.py measures
how often); the sampled token is always part of it, so its log-prob stays finite.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from r1mega.inference.sampling import _all_reduce, sampler_support  # noqa: F401  (sampler_support: the sampler's own rule, re-exported)
from r1mega.kernels import batch_invariant
from r1mega.parallel.comm import reduce_from_group
from r1mega.parallel.layout import ParallelState

def _target_local(target: torch.Tensor, start: int, n_local: int) -> tuple[torch.Tensor, torch.Tensor]:
    local = target - start
    inside = (local >= 0) & (local < n_local)
    return local.clamp(0, n_local - 1), inside


def support_with_targets(keep: torch.Tensor, target: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """The sampled token always belongs to the support (a recomputed threshold may miss it by a bit)."""
    local, inside = _target_local(target, ps.r("tp") * keep.shape[-1], keep.shape[-1])
    return keep.scatter(-1, local[..., None], inside[..., None] | keep.gather(-1, local[..., None]))


def scores(scaled: torch.Tensor, target: torch.Tensor, ps: ParallelState, keep: Optional[torch.Tensor] = None,
           entropy: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """scaled logits [..., V/tp], targets [...] -> (log p(target) [...], entropy [...] or None), both
    differentiable, over the support `keep` [..., V/tp] when given (renormalised there), else over
    the whole vocabulary. Three (four with entropy) all-reduces of one value per token."""
    group = ps.g("tp")
    n_local = scaled.shape[-1]
    if keep is not None:
        scaled = scaled.masked_fill(~keep, float("-inf"))
    gmax = _all_reduce(scaled.detach().max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
    shifted = scaled - gmax[..., None]
    e = shifted.exp()
    z = reduce_from_group(batch_invariant.row_sum(e), group)
    local, inside = _target_local(target, ps.r("tp") * n_local, n_local)
    picked = reduce_from_group(shifted.gather(-1, local[..., None])[..., 0].masked_fill(~inside, 0.0), group)
    logp = picked - z.log()
    if not entropy:
        return logp, None
    # H = log z - E_p[shifted]; masked entries have p = 0 (their -inf is replaced before the product)
    finite = shifted if keep is None else shifted.masked_fill(~keep, 0.0)
    mean = reduce_from_group((e * finite).sum(-1), group) / z
    return logp, z.log() - mean


def pack_support(keep: torch.Tensor) -> tuple[torch.Size, torch.Tensor]:
    """A support as (shape, flat indices of its kept entries): memory follows the support's size."""
    return keep.shape, keep.flatten().nonzero().flatten()


def unpack_support(packed: tuple[torch.Size, torch.Tensor]) -> torch.Tensor:
    shape, idx = packed
    out = torch.zeros(shape.numel(), dtype=torch.bool, device=idx.device)
    return out.index_fill_(0, idx, True).view(shape)
