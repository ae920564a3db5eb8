"""GRPO maths against hand-computed numbers, rewards, and the sandbox's limits."""
import math

import pytest
import torch

from r1mega.rl.rewards import equal_reward_groups
from r1mega.rl.update import group_advantages, grpo_loss, k3_kl
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
    t = grpo_loss(logp, old, ref, adv, mask, clip_low=0.2, clip_high=0.2, kl_coef=beta, norm="sequence",
                  global_count=2)
    # seq 1: ratios 1.25 (clipped to 1.2 since A>0) and 1.0; kl: 0, exp(log(.2/.3)) - log(.2/.3) - 1
    kl12 = 0.2 / 0.3 - math.log(0.2 / 0.3) - 1
    seq1 = -((1.2 - 0) + (1.0 - beta * kl12)) / 2
    # seq 2: ratio 2.0, A<0 -> min(-2, -1.2) = -2 (no clip benefit); kl 0
    seq2 = -(-2.0)
    assert t.loss.item() == pytest.approx((seq1 + seq2) / 2, rel=1e-6)
    # verl's clip fraction: only where min() took the clipped branch (seq 2's ratio is out of range,
    # but the unclipped -2 is the smaller one)
    assert t.clipped.tolist() == [[True, False], [False, False]]
    tok = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.2, beta, norm="token", global_count=3)
    assert tok.loss.item() == pytest.approx((-1.2 - (1.0 - beta * kl12) + 2.0) / 3, rel=1e-6)
    # clip-higher: a wider upper bound lets the positive ratio through
    hi = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.28, 0.0, "sequence", 2)
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


# ---- GRPO on a user's data: the findings of issue 12, each pinned -----------------------------

def test_answer_extraction_prefers_the_final_answer_tag_then_boxed_outside_the_thought():
    gold = {"answer": "4"}
    assert accuracy_reward(r"<think>...\boxed{4}</think><answer>5</answer>", gold) == 0.0
    assert accuracy_reward("<answer>4</answer>", gold) == 1.0
    assert accuracy_reward(r"<think>so \boxed{4}</think> I give up", gold) == 0.0  # boxed only inside the thought
    assert accuracy_reward(r"<think>maybe \boxed{5}</think> so \boxed{4}", gold) == 1.0
    assert accuracy_reward("<answer>3</answer> <answer>4</answer>", gold) == 0.0  # two answers: a hedge
    assert accuracy_reward("<answer>4</answer> <answer>4</answer>", gold) == 1.0
    assert accuracy_reward(r"<answer>\boxed{\frac{8}{2}}</answer>", gold) == 1.0
    assert final_answer(r"\boxed{1} then \boxed{2") == "1"  # an unclosed box does not hide an earlier one


@pytest.mark.parametrize("text, ok", [
    ("<think>reason</think> <answer>4</answer>", 1.0),
    (r"<think>reason</think> so \boxed{4}", 1.0),
    ("<think> </think> <answer>4</answer>", 0.0),  # empty thought
    ("<think>a</think><think>b</think> <answer>4</answer>", 0.0),  # doubled tags
    ("<think>a</think> <answer>4</answer><answer>4</answer>", 0.0),
    ("<think>a</think> 4", 1.0),  # chat style: the text after the thought is the answer
    ("<think>a</think>  ", 0.0),  # no answer
    ("<think>a</think> <answer> </answer>", 0.0),
    ("hello <think>a</think> <answer>4</answer>", 0.0),  # text before the thought
    ("<think>a</think> <answer>4</answer> and more", 0.0),
])
def test_strict_format_reward(text, ok):
    assert format_reward(text, {}) == ok


def test_language_target_comes_from_the_problem_then_rl_language(tmp_path):
    from r1mega.config import Config
    from r1mega.data.prompts import PromptSource
    from rl_data import write_jsonl

    zh = "<think>一 二 three</think> <answer>1</answer>"
    assert language_reward(zh, {"language": "zh"}) == pytest.approx(2 / 3)
    assert language_reward(zh, {"language": None}) == pytest.approx(1 / 3)  # default en
    path = write_jsonl(str(tmp_path / "p.jsonl"), [{"prompt": "a", "answer": "1"},
                                                   {"prompt": "b", "answer": "2", "language": "en"}])
    cfg = Config()
    cfg.rl.prompts, cfg.rl.language = [path], "zh"
    langs = {p["prompt"]: p["language"] for p in PromptSource(cfg.rl, cfg.data.synthetic, cfg.seed, tok=None).take(0, 2, 0)}
    assert langs == {"a": "zh", "b": "en"}


def test_code_reward_runs_asserts_entry_points_and_stdin_cases():
    from r1mega.rl.rewards import code_reward

    inc = "<think>easy</think> <answer>\n```python\ndef inc(x):\n    return x + 1\n```\n</answer>"
    assert code_reward(inc, {"tests": "assert inc(1) == 2"}) == 1.0
    assert code_reward(inc, {"tests": "assert inc(1) == 3"}) == 0.0
    assert code_reward(inc.replace("inc", "double").replace("x + 1", "2 * x"),
                       {"tests": "def check(f):\n    assert f(3) == 6", "entry_point": "double"}) == 1.0
    io = "```python\nprint(int(input()) * 2)\n```"
    assert code_reward(io, {"tests": [{"input": "3\n", "output": "6\n"}, {"input": "5", "output": "10"}]}) == 1.0
    assert code_reward(io, {"tests": [{"input": "3\n", "output": "7\n"}]}) == 0.0
    # code only inside the thought is not the answer
    assert code_reward("<think>```python\ndef inc(x):\n    return x + 1\n```</think>", {"tests": "assert inc(1) == 2"}) == 0.0


def test_equal_reward_groups_get_exactly_zero_advantage():
    naive_nonzero = 0
    for k in range(1, 100):  # fractional totals (format + accuracy + a language share)
        r = torch.full((16,), 0.5 + k / 7.0 + 0.1)
        naive = (r - r.mean()) / (r.std() + 1e-6)
        naive_nonzero += int(naive.abs().max() > 0)
        assert torch.all(group_advantages(r, 16) == 0)
        assert torch.all(group_advantages(r, 16, scale=False) == 0)
    assert naive_nonzero > 0  # the float rounding this guards against is real


def test_dr_grpo_advantages_and_constant_normaliser():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    t = grpo_loss(logp, logp, logp, torch.tensor([1.0, -1.0]), mask, 0.2, 0.2, 0.0, "constant",
                  global_count=2 * 8)  # 2 sequences x max_new_tokens 8
    assert t.loss.item() == pytest.approx(-(3 * 1.0 - 1.0) / 16)  # token sums, not per-sequence means


def test_truncated_importance_sampling_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.4)]])
    rollout = torch.tensor([[math.log(0.1), math.log(0.5)]])  # sampler: 0.1 and 0.5; trainer: 0.5 and 0.4
    mask = torch.ones(1, 2, dtype=torch.bool)
    t = grpo_loss(logp, logp, logp, torch.tensor([1.0]), mask, 0.2, 0.2, 0.0, "token", 2.0,
                  rollout_logp=rollout, tis_cap=2.0)
    # weights min(0.5 / 0.1, 2) = 2 (capped) and 0.4 / 0.5 = 0.8; ratio 1
    assert t.loss.item() == pytest.approx(-(2.0 + 0.8) / 2)
    assert t.tis_capped.tolist() == [[True, False]]
    off = grpo_loss(logp, logp, logp, torch.tensor([1.0]), mask, 0.2, 0.2, 0.0, "token", 2.0)
    assert off.loss.item() == pytest.approx(-1.0)


def test_overlong_shaping_by_hand():
    from r1mega.rl.rewards import overlong_shaping

    lengths = torch.tensor([10, 12, 14, 16])
    torch.testing.assert_close(overlong_shaping(lengths, 16, 4, 1.0), torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert torch.all(overlong_shaping(lengths, 16, 0, 1.0) == 0)


def test_max_new_tokens_schedule():
    from r1mega.config import Config
    from r1mega.rl.rollout import max_new_tokens_at

    cfg = Config()
    cfg.rl.max_new_tokens_schedule = [[8200, 65536]]
    assert [max_new_tokens_at(cfg.rl, s) for s in (0, 8199, 8200, 10399)] == [32768, 32768, 65536, 65536]


def test_top_k_ranks_real_vocab_ids_only():
    from r1mega.inference.sampling import row_keys, sample
    from r1mega.parallel.layout import single_process_state

    ps = single_process_state()
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, 9.0, 8.0]])  # ids 4, 5 are padding (tokenizer has 4)
    for seed in range(20):
        keys = row_keys(seed, 0, torch.arange(1))
        tok, _ = sample(logits, ps, 1.0, top_k=1, keys=keys, vocab_size=4)
        assert tok.item() == 2  # the best real id, never padding and never token 0 by default
        tok, _ = sample(logits, ps, 1.0, top_k=2, keys=keys, vocab_size=4)
        assert tok.item() in (1, 2)


@pytest.mark.parametrize("override, key", [
    ("rl.temperature=0", "rl.temperature"), ("rl.top_p=0", "rl.top_p"), ("rl.top_p=1.5", "rl.top_p"),
    ("rl.top_k=-1", "rl.top_k"), ("rl.group_size=1", "rl.group_size"), ("rl.rewards=[vibes]", "rl.rewards"),
    ("rl.rollout_batch=100", "rl.rollout_batch"), ("rl.minibatches=0", "rl.minibatches"),
    ("rl.max_new_tokens_schedule=[[10,5],[5,6]]", "rl.max_new_tokens_schedule[1]"),
    ("rl.template=alpaca", "rl.template"), ("rl.loss_norm=mean", "rl.loss_norm"), ("rl.tis_cap=0.5", "rl.tis_cap"),
    ("rl.language=tlh", "rl.language"), ("rl.answer_fallback=guess", "rl.answer_fallback"),
    ("rl.log_rollouts_every=-1", "rl.log_rollouts_every"), ("rl.prompts=[/nonexistent.jsonl]", "rl.prompts[0]"),
    ("data.synthetic=null", "rl.prompts"),
    ("rl.rewards=[accuracy,format,code]", "rl.rewards"), ("rl.rewards=[format,format]", "rl.rewards"),
    # a soft overlong buffer longer than the budget punished every response, an empty one too
    ("rl.overlong_buffer=100000", "rl.overlong_buffer"),
])
def test_rl_keys_are_checked_up_front(override, key):
    import os

    from r1mega.config import ConfigError, load_config, validate_rl, validate_training
    from r1mega.rl.rewards import REWARDS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "tiny", "r1_zero_demo.yaml"), [override])
    with pytest.raises(ConfigError) as e:
        validate_rl(validate_training(cfg, 1, needs_data=False), 1, rewards=REWARDS)
    assert e.value.key == key


def test_which_outputs_take_part_in_the_loss():
    from r1mega.config import Config
    from r1mega.rl.update import advantages
    from r1mega.rl.rollout import ScoredRollout

    cfg = Config()
    cfg.rl.group_size = 2
    scored = ScoredRollout(None, [], [], [], [], torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=torch.float64),
                           torch.tensor([False, True, False, False]), 8)
    adv, keep = advantages(cfg.rl, scored)
    assert keep.tolist() == [True] * 4 and adv[2:].tolist() == [0.0, 0.0]
    cfg.rl.overlong_filter, cfg.rl.drop_equal_reward_groups = True, True
    _, keep = advantages(cfg.rl, scored)
    assert keep.tolist() == [True, False, False, False]  # DAPO: truncated out; equal-reward group out
