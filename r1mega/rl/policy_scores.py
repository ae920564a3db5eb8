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


_BITS = 1 << torch.arange(8, dtype=torch.uint8)  # bit j of a packed byte: entry 8i + j


def pack_support(keep: torch.Tensor) -> tuple[torch.Size, torch.Tensor]:
    """A support as (shape, payload), the smaller of two forms: the flat indices of its kept entries
    (int32, or int64 past 2^31 entries; 4 bytes per kept entry: small for the narrow supports of a
    confident policy) or a bitmask (uint8, one bit per vocab-shard entry: a wide support, e.g. top-p
    0.95 of a high-entropy policy, costs numel / 8 bytes, where int64 indices cost 8 bytes per kept
    entry, twice the token's float32 logits, kept for the whole rollout). The payload's dtype tells
    the form."""
    flat = keep.flatten()
    count, n = int(flat.sum()), flat.numel()
    if 4 * count <= -(-n // 8):
        return keep.shape, flat.nonzero().flatten().to(torch.int32 if n < 2 ** 31 else torch.int64)
    padded = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8, device=flat.device)
    padded[:n] = flat
    return keep.shape, (padded.view(-1, 8) * _BITS.to(flat.device)).sum(-1, dtype=torch.uint8)


def unpack_support(packed: tuple[torch.Size, torch.Tensor]) -> torch.Tensor:
    shape, payload = packed
    if payload.dtype == torch.uint8:  # a bitmask
        bits = (payload[:, None] & _BITS.to(payload.device)) != 0
        return bits.flatten()[:shape.numel()].view(shape)
    out = torch.zeros(shape.numel(), dtype=torch.bool, device=payload.device)
    return out.index_fill_(0, payload.long(), True).view(shape)
