"""GRPO's pieces as pure functions (DeepSeekMath / DeepSeek-R1, with current options).

  advantage  A_i = (r_i - mean(r_group)) / (std(r_group) + eps), shared by every token of output i;
             exactly 0 when the group's rewards are all equal; Dr.GRPO drops the std
  ratio      rho = exp(logp - logp_old)
  surrogate  min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)       clip_high > clip_low: "clip-higher"
  TIS        w = min(exp(logp_old - logp_rollout), cap), detached, multiplies the surrogate: the
             rollout came from the sampler's numerics, not the trainer's (truncated importance sampling)
  KL (k3)    exp(d) - d - 1 with d = logp_ref - logp clamped to +-20, the estimate to +-10 (verl);
             rl.unbiased_kl: times pi_theta / pi_old (DeepSeek-V3.2: unbiased under the old policy)
  OPSM       rl.opsm_delta: a sequence with A < 0 whose mean log(pi_old / pi_theta) exceeds delta
             drops out of the surrogate (DeepSeek-V3.2's off-policy sequence masking)
  entropy    rl.entropy_coef: + coef x token entropy inside the same normalisation (a bonus)
  clip_frac  tokens where min() takes the clipped branch (as verl counts it)
  loss       -(w surrogate - beta KL + coef H), normalised per sequence then over sequences (DeepSeekMath),
             over all tokens of the step (token), or by sequences x max_new_tokens (constant,
             Dr.GRPO); always by the *global* count, so DP sums of gradients are exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # annotations only: the loss's pieces stay free of the rows' module
    from r1mega.config import RLConfig
    from r1mega.rl.train_batch import TrainBatch


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



def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[n_groups] True where every output of the group got the same reward (zero advantage)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


# verl's clamps of the k3 estimator: the log-ratio to +-20 (exp stays finite), the estimate to +-10
K3_LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (d.exp() - d - 1).clamp(-K3_CLAMP, K3_CLAMP)


def per_sequence_sum(values: torch.Tensor, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of per-token values [b, s] over each sequence: seq [b, s] (-1: no sequence) -> [n]."""
    inside = seq >= 0
    return values.new_zeros(n).index_add(0, seq.clamp(min=0).flatten(), (values * inside).flatten())


@dataclass
class GRPOTerms:
    loss: torch.Tensor  # scalar, this rank's share of the global objective
    kl: torch.Tensor  # per token [b, s]: the KL estimate in the loss (k3, or k3 x pi/pi_old when unbiased)
    clipped: torch.Tensor  # per token bool: min() took the clipped branch (verl's clip fraction)
    ratio: torch.Tensor
    tis_capped: torch.Tensor  # per token bool: the importance weight hit the cap
    opsm_masked: torch.Tensor  # per token bool: its sequence was left out by off-policy sequence masking


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_low: float, clip_high: float, kl_coef: float, token_level: bool,
              global_count: float, rollout_logp: Optional[torch.Tensor] = None, tis_cap: float = 0.0,
              norm: Optional[str] = None, seq: Optional[torch.Tensor] = None, entropy: Optional[torch.Tensor] = None,
              entropy_coef: float = 0.0, unbiased_kl: bool = False, opsm_delta: Optional[float] = None) -> GRPOTerms:
    """logp/old_logp/ref_logp/mask [b, s] on completion tokens. advantages: [b] (one sequence per
    row) or per token [b, s] with seq [b, s] naming each token's sequence (-1: none), as packed rows
    hold several sequences. global_count: number of sequences (sequence), tokens (token), or
    sequences x max_new_tokens (constant) in the whole step, over all DP ranks.
    rollout_logp + tis_cap > 0: truncated importance sampling. entropy [b, s] (differentiable) with
    entropy_coef: an entropy bonus. unbiased_kl: k3 weighted by pi_theta / pi_old (DeepSeek-V3.2).
    opsm_delta: a sequence with A < 0 whose mean log(pi_old / pi_theta) over its tokens exceeds it
    takes no part in the surrogate (V3.2's off-policy sequence masking; its KL term stays)."""
    norm = norm or ("token" if token_level else "sequence")
    b, s = logp.shape
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand(b, s)
        seq = torch.arange(b, device=logp.device)[:, None].expand(b, s)
    elif seq is None:
        raise ValueError("grpo_loss: per-token advantages need seq, each token's sequence")
    n_seq = int(seq.max()) + 1 if seq.numel() else 0
    maskf = mask.float()
    ratio = (logp - old_logp).exp()
    adv = advantages.to(logp.dtype)
    unclipped = ratio * adv
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    clipped_adv = clipped_ratio * adv
    surrogate = torch.minimum(unclipped, clipped_adv)
    capped = torch.zeros_like(mask, dtype=torch.bool)
    if rollout_logp is not None and tis_cap > 0:
        w = (old_logp - rollout_logp).exp().detach()
        capped = (w > tis_cap) & mask.bool()
        surrogate = surrogate * w.clamp(max=tis_cap)
    dropped = torch.zeros_like(mask, dtype=torch.bool)
    if opsm_delta is not None and n_seq:
        tokens = per_sequence_sum(maskf, seq, n_seq)
        drift = per_sequence_sum((old_logp - logp).detach() * maskf, seq, n_seq) / tokens.clamp(min=1)
        negative = per_sequence_sum((adv < 0).float() * maskf, seq, n_seq) > 0
        off = negative & (drift > opsm_delta)
        dropped = off[seq.clamp(min=0)] & (seq >= 0) & mask.bool()
        surrogate = surrogate.masked_fill(dropped, 0.0)
    kl = torch.zeros_like(logp)
    if kl_coef:
        kl = k3_kl(logp, ref_logp)
        if unbiased_kl:  # E_old[(pi/pi_old) k3] = KL(pi || ref): the gradient flows through the ratio too
            kl = ratio * kl
    bonus = entropy_coef * entropy if entropy is not None and entropy_coef else 0.0
    per_token = -(surrogate - kl_coef * kl + bonus) * maskf
    if norm == "sequence":
        lengths = per_sequence_sum(maskf, seq, max(n_seq, 1)).clamp(min=1)
        loss = (per_token / lengths[seq.clamp(min=0)]).sum() / global_count
    else:  # token and constant differ only in the count
        loss = per_token.sum() / global_count
    clipped = (clipped_adv < unclipped) & mask.bool()  # -A clip(r) > -A r: the clipped branch was taken
    return GRPOTerms(loss, kl, clipped, ratio, capped, dropped)


def loss_count(rl: RLConfig, batch: TrainBatch, max_new_tokens: int) -> float:
    """This rank's share of the loss normaliser: trained sequences, tokens, or sequences x max_new_tokens."""
    norm = "token" if rl.token_level_loss else rl.loss_norm
    if norm == "token":
        return float(batch.mask.sum())
    if norm == "constant":
        return float(batch.sequences * max_new_tokens)
    n = int(batch.seq.max()) + 1 if batch.seq.numel() else 0
    return float((per_sequence_sum(batch.mask.double(), batch.seq, max(n, 1)) > 0).sum())
