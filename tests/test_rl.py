"""GRPO maths against hand-computed numbers, rewards, and the sandbox's limits."""
import math

import pytest
import torch

from r1mega.rl.loss import equal_reward_groups, group_advantages, grpo_loss, k3_kl
from r1mega.rl.rewards import accuracy_reward, final_answer, format_reward, language_reward, total_reward


def test_advantages_by_hand():
    # one group of 4: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(adv[:4], torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]), atol=1e-5, rtol=0)
    assert torch.all(adv[4:] == 0)
    assert equal_reward_groups(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4).tolist() == [False, True]


def test_k3_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    # exp(-0.5) - (-0.5) - 1
    assert k3_kl(logp, ref).item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    assert k3_kl(ref, ref).item() == 0.0


def test_clipped_surrogate_with_kl_by_hand():
    # two sequences: A = +1 (2 tokens), A = -1 (1 token + 1 padding)
    logp = torch.tensor([[math.log(0.5), math.log(0.3)], [math.log(0.2), 0.0]])
    old = torch.tensor([[math.log(0.4), math.log(0.3)], [math.log(0.1), 0.0]])
    ref = torch.tensor([[math.log(0.5), math.log(0.2)], [math.log(0.2), 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    beta = 0.1
    t = grpo_loss(logp, old, ref, adv, mask, clip_low=0.2, clip_high=0.2, kl_coef=beta, token_level=False,
                  global_count=2)
    # seq 1: ratios 1.25 (clipped to 1.2 since A>0) and 1.0; kl: 0, exp(log(.2/.3)) - log(.2/.3) - 1
    kl12 = 0.2 / 0.3 - math.log(0.2 / 0.3) - 1
    seq1 = -((1.2 - 0) + (1.0 - beta * kl12)) / 2
    # seq 2: ratio 2.0, A<0 -> min(-2, -1.2) = -2 (no clip benefit); kl 0
    seq2 = -(-2.0)
    assert t.loss.item() == pytest.approx((seq1 + seq2) / 2, rel=1e-6)
    assert t.clipped.tolist() == [[True, False], [True, False]]
    tok = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.2, beta, token_level=True, global_count=3)
    assert tok.loss.item() == pytest.approx((-1.2 - (1.0 - beta * kl12) + 2.0) / 3, rel=1e-6)
    # clip-higher: a wider upper bound lets the positive ratio through
    hi = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.28, 0.0, False, 2)
    assert hi.loss.item() == pytest.approx((-(1.25 + 1.0) / 2 + 2.0) / 2, rel=1e-6)


def test_rewards():
    assert final_answer(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert accuracy_reward(r"<think>..</think> \boxed{\frac{1}{2}}", {"answer": "0.5"}) == 1.0
    assert accuracy_reward("Q: 1+2= A: 4\n", {"answer": "3"}) == 0.0
    assert format_reward("<think>reason</think> 42", {}) == 1.0 and format_reward("42", {}) == 0.0
    assert language_reward("<think>one two 三 四</think> x", {"language": "en"}) == 0.5
    assert total_reward(["accuracy", "format"], r"<think>x</think> \boxed{3}", {"answer": "3"}) == 2.0
    with pytest.raises(ValueError, match="unknown reward"):
        total_reward(["vibes"], "", {})
