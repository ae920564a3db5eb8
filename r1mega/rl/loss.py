"""GRPO's pieces as pure functions (DeepSeekMath / DeepSeek-R1, with current options).

  advantage  A_i = (r_i - mean(r_group)) / (std(r_group) + eps), shared by every token of output i
  ratio      rho = exp(logp - logp_old)
  surrogate  min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)       clip_high > clip_low: "clip-higher"
  KL (k3)    exp(logp_ref - logp) - (logp_ref - logp) - 1                 unbiased, >= 0
  loss       -(surrogate - beta KL), averaged per sequence then over sequences (DeepSeekMath), or
             over all tokens of the batch (token-level); divided by the *global* count so DP sums
             of gradients are exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """rewards [n_groups * G] (groups contiguous) -> advantages of the same shape (unbiased std, as
    torch.std and DeepSeekMath's implementation)."""
    r = rewards.view(-1, group_size).float()
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    return ((r - r.mean(dim=1, keepdim=True)) / (std + eps)).view(-1)


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


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_low: float, clip_high: float, kl_coef: float, token_level: bool,
              global_count: float) -> GRPOTerms:
    """logp/old_logp/ref_logp/mask [b, s] on completion tokens; advantages [b]. global_count: number
    of sequences (sequence-level) or tokens (token-level) in the whole step, over all DP ranks."""
    mask = mask.float()
    ratio = (logp - old_logp).exp()
    adv = advantages[:, None].to(logp.dtype)
    unclipped = ratio * adv
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    surrogate = torch.minimum(unclipped, clipped_ratio * adv)
    kl = k3_kl(logp, ref_logp) if kl_coef else torch.zeros_like(logp)
    per_token = -(surrogate - kl_coef * kl) * mask
    if token_level:
        loss = per_token.sum() / global_count
    else:
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).sum() / global_count
    return GRPOTerms(loss, kl, (clipped_ratio != ratio) & mask.bool(), ratio)
