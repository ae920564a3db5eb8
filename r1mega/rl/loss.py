"""GRPO's pieces as pure functions (DeepSeekMath / DeepSeek-R1, with current options).

  advantage  A_i = (r_i - mean(r_group)) / (std(r_group) + eps), shared by every token of output i;
             exactly 0 when the group's rewards are all equal; Dr.GRPO drops the std
  ratio      rho = exp(logp - logp_old)
  surrogate  min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)       clip_high > clip_low: "clip-higher"
  TIS        w = min(exp(logp_old - logp_rollout), cap), detached, multiplies the surrogate: the
             rollout came from the sampler's numerics, not the trainer's (truncated importance sampling)
  KL (k3)    exp(logp_ref - logp) - (logp_ref - logp) - 1                 unbiased, >= 0
  loss       -(w surrogate - beta KL), normalised per sequence then over sequences (DeepSeekMath),
             over all tokens of the step (token), or by sequences x max_new_tokens (constant,
             Dr.GRPO); always by the *global* count, so DP sums of gradients are exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards [n_groups * G] (groups contiguous) -> advantages of the same shape. scale: divide by
    the group's unbiased std (as torch.std and DeepSeekMath); false: Dr.GRPO. A group whose rewards
    are all equal gets exactly 0: its mean of equal floats may differ from them by rounding, which
    the std division would blow up."""
    r = rewards.view(-1, group_size).double()
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    equal = (r.max(dim=1, keepdim=True).values == r.min(dim=1, keepdim=True).values)
    return centred.masked_fill(equal, 0.0).float().view(-1)


def overlong_shaping(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max - buffer tokens, then falling linearly to
    -penalty at max_new_tokens."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * (over / buffer).clamp(max=1.0)


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[n_groups] True where every output of the group got the same reward (zero advantage)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return d.exp() - d - 1


@dataclass
class GRPOTerms:
    loss: torch.Tensor  # scalar, this rank's share of the global objective
    kl: torch.Tensor  # per token [b, s]
    clipped: torch.Tensor  # per token bool: the clip was active
    ratio: torch.Tensor
    tis_capped: torch.Tensor  # per token bool: the importance weight hit the cap


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_low: float, clip_high: float, kl_coef: float, token_level: bool,
              global_count: float, rollout_logp: Optional[torch.Tensor] = None, tis_cap: float = 0.0,
              norm: Optional[str] = None) -> GRPOTerms:
    """logp/old_logp/ref_logp/mask [b, s] on completion tokens; advantages [b]. global_count: number
    of sequences (sequence), tokens (token), or sequences x max_new_tokens (constant) in the whole
    step, over all DP ranks. rollout_logp + tis_cap > 0: truncated importance sampling."""
    norm = norm or ("token" if token_level else "sequence")
    mask = mask.float()
    ratio = (logp - old_logp).exp()
    adv = advantages[:, None].to(logp.dtype)
    unclipped = ratio * adv
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    surrogate = torch.minimum(unclipped, clipped_ratio * adv)
    capped = torch.zeros_like(mask, dtype=torch.bool)
    if rollout_logp is not None and tis_cap > 0:
        w = (old_logp - rollout_logp).exp().detach()
        capped = (w > tis_cap) & mask.bool()
        surrogate = surrogate * w.clamp(max=tis_cap)
    kl = k3_kl(logp, ref_logp) if kl_coef else torch.zeros_like(logp)
    per_token = -(surrogate - kl_coef * kl) * mask
    if norm == "sequence":
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).sum() / global_count
    else:  # token and constant differ only in the count
        loss = per_token.sum() / global_count
    return GRPOTerms(loss, kl, (clipped_ratio != ratio) & mask.bool(), ratio, capped)
