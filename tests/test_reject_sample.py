"""Rejection-sampling filters on crafted samples: each reason, in order, dedup and the quota."""
from r1mega.generation.filters import FilterConfig, judge_sample, language_share
from r1mega.generation.reject_sample import select


def s(text, i=0, reason="eos", tokens=10):
    return {"sample": i, "completion": text, "finish_reason": reason, "completion_tokens": tokens}


GOOD = "<think>Half of one is one over two.</think> The answer is \\boxed{1/2}."
MATH = {"id": "m", "prompt": "What is 1/2?", "answer": "0.5"}


def test_each_rejection_reason():
    cfg = FilterConfig(max_tokens=50, max_paragraph_chars=60)
    assert judge_sample(MATH, s(GOOD), cfg) is None
    assert judge_sample(MATH, s(GOOD, reason="length"), cfg) == "truncated"
    assert judge_sample(MATH, s(GOOD, tokens=51), cfg) == "too_long"
    assert judge_sample(MATH, s("The answer is \\boxed{1/2}."), cfg) == "format"
    assert judge_sample(MATH, s("The answer is \\boxed{1/2}."), FilterConfig(require_format=False)) is None
    assert judge_sample(MATH, s("<think>hmm</think> \\boxed{3}"), cfg) == "wrong"
    assert judge_sample(MATH, s("<think>hmm</think> no idea"), cfg) == "wrong"
    mixed = "<think>Half of one 是 一 半 的 意 思 so</think> \\boxed{0.5}"
    assert language_share("Half of one 是 一 半 的 意 思 so", "en") == 4 / 10
    assert judge_sample(MATH, s(mixed), cfg) == "language_mixing"
    assert judge_sample({**MATH, "language": "zh"}, s("<think>一半</think> \\boxed{0.5}"), cfg) is None
    para = "<think>" + "one half " * 10 + "</think> \\boxed{0.5}"
    assert judge_sample(MATH, s(para), cfg) == "long_paragraph"
    split = "<think>" + "one half\n\n" * 10 + "</think> \\boxed{0.5}"
    assert judge_sample(MATH, s(split), cfg) is None
    code = "<think>try\n```python\nprint(1/2)\n```\n</think> \\boxed{0.5}"
    assert judge_sample(MATH, s(code), cfg) == "code_in_cot"
    assert judge_sample(MATH, s(code), FilterConfig(allow_code_in_cot=True)) is None
    # code problems: the record's tests decide, in the sandbox
    prog = {"id": "c", "prompt": "add", "tests": "assert add(2, 3) == 5"}
    ok = "<think>add them</think>\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = ok.replace("a + b", "a - b")
    assert judge_sample(prog, s(ok), cfg) is None and judge_sample(prog, s(bad), cfg) == "tests_failed"
    io = {"id": "d", "prompt": "double n", "tests": [{"input": "3\n", "output": "6\n"}]}
    double = "<think>read, double</think>\n```python\nprint(2 * int(input()))\n```"
    assert judge_sample(io, s(double), cfg) is None
    assert judge_sample(io, s(double.replace("2 *", "3 *")), cfg) == "tests_failed"
    # records without answer or tests (non-reasoning data) are judged on readability only
    assert judge_sample({"id": "x", "prompt": "hi"}, s("<think>greet</think> Hello!"), cfg) is None


def test_select_dedups_and_keeps_up_to_n():
    samples = {"m": [s(GOOD, 0), s("<think>hmm</think> \\boxed{3}", 1), s(GOOD + " ", 2),
                     s(GOOD.replace("one over two", "0.5"), 3), s(GOOD.replace("Half", "A half"), 4)],
               "n": [s("<think>x</think> \\boxed{2}", 0)]}
    rows, counts = select([MATH, {"id": "n", "prompt": "1+1?", "answer": "2"}], samples, FilterConfig(), keep=2)
    assert counts == {"kept": 3, "wrong": 1, "duplicate": 1, "over_quota": 1}
    assert [(r["id"], r["sample"]) for r in rows] == [("m", 0), ("m", 3), ("n", 0)]
    assert rows[0]["messages"] == [{"role": "user", "content": "What is 1/2?"},
                                   {"role": "assistant", "content": GOOD}]


def test_response_prefix_is_judged_and_trained_with_the_completion():
    """The chat template writes "<think>\\n" for the model: that prefix is part of the response."""
    from r1mega.generation.records import render_prompt

    class ChatTok:
        def apply_chat_template(self, messages, add_generation_prompt=True):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    assert render_prompt(MATH, "chat", ChatTok()) == ("<user>What is 1/2?<assistant>", "")
    text, prefix = render_prompt(MATH, "chat_think", ChatTok())
    assert (text, prefix) == ("<user>What is 1/2?<assistant><think>\n", "<think>\n")
    assert render_prompt(MATH, "raw") == ("What is 1/2?", "")
    sample = {**s("Half of one.</think> The answer is \\boxed{0.5}."), "response_prefix": prefix}
    rows, counts = select([MATH], {"m": [sample]}, FilterConfig(), keep=1)
    assert counts == {"kept": 1}
    assert rows[0]["messages"][-1]["content"] == "<think>\nHalf of one.</think> The answer is \\boxed{0.5}."
