"""Per-token scores of the sampled tokens from vocab-sharded logits: log-probs, the policy's
entropy, and the sampler's top-p/top-k support (DeepSeek-V3.2's keep-sampling-mask), all computed
from each TP rank's vocab shard with a few all-reduces of one value per token: no rank ever holds
the full vocabulary of a token. `token_scores` gives them for a microbatch's model output (under
context parallelism, this rank's tokens, then the rows gathered whole); `sequence_logprobs` for a
forward-only pass over microbatches.

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

from r1mega.inference.sampling import sampler_support
from r1mega.kernels import batch_invariant
from r1mega.parallel.comm import all_reduce_values, reduce_from_group
from r1mega.parallel.context_parallel import gather_tokens, local_tokens
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.pipeline import Microbatch, forward_backward
from r1mega.parallel.vocab_parallel import vocab_parallel_log_probs

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
    gmax = all_reduce_values(scaled.detach().max(dim=-1).values.clone(), group, dist.ReduceOp.MAX)
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


# ---- a microbatch's scores, on the model's output ------------------------------------------------

def token_scores(out, mb: Microbatch, ps: ParallelState, temperature: float, entropy: bool = False,
                 entropy_grad: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(log softmax(logits / T) at the targets [b, s], token entropy [b, s] or None), in float32
    like the sampler's. Under context parallelism this rank scores its own tokens, then the rows are
    gathered whole over cp. Over the sampler's support when the microbatch carries one (or asks for
    it with "support_rule": the old-policy pass computes and keeps it, and the full-vocabulary log-prob
    that moves the sampler's into its truncated distribution, in mb.extra)."""
    targets = mb.extra["targets"]
    scaled = out.logits.float() / temperature  # [s_local, b, V/tp]
    tgt = local_tokens(targets, ps).t()
    keep, rule = mb.extra.get("support"), mb.extra.get("support_rule")
    if rule is not None:
        keep = support_with_targets(sampler_support(scaled.detach(), ps, *rule), tgt, ps)
        mb.extra["support"] = pack_support(keep)
    elif keep is not None:
        keep = unpack_support(keep)
    ent = None
    if keep is not None or entropy_grad or batch_invariant.enabled():  # exact: the sampler's formula
        logp, ent = scores(scaled, tgt, ps, keep, entropy)
    else:
        logp = vocab_parallel_log_probs(scaled, tgt, ps)
        if entropy:
            with torch.no_grad():
                ent = scores(scaled.detach(), tgt, ps, None, True)[1]
    if rule is not None:
        with torch.no_grad():  # exact mode: the sampler's formula, so the rollout's log-prob equals it bitwise
            full = (scores(scaled, tgt, ps)[0] if batch_invariant.enabled()
                    else vocab_parallel_log_probs(scaled, tgt, ps))
        mb.extra["full_logp"] = gather_tokens(full.detach().t(), ps, targets.shape[1])
    return (gather_tokens(logp.t(), ps, targets.shape[1]),
            None if ent is None else gather_tokens(ent.t(), ps, targets.shape[1]))


def token_logprobs(out, mb: Microbatch, ps: ParallelState, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at the targets [b, s] (see token_scores)."""
    return token_scores(out, mb, ps, temperature)[0]


@torch.no_grad()
def sequence_logprobs(chunks, ps: ParallelState, mbs: list[Microbatch], temperature: float) -> Optional[torch.Tensor]:
    """Log-probs of the targets under the model [B, S] (last pipeline stage; None elsewhere)."""
    res = forward_backward(list(chunks), mbs, ps,
                           lambda out, mb: (out.logits.new_zeros(()), token_logprobs(out, mb, ps, temperature)),
                           forward_only=True)
    return torch.cat([r[1] for r in res]) if res else None
