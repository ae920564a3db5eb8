"""Hostile probe of the answer judge's time: answers that are numbers too large to evaluate
(towers, huge factorials and binomials, e^{10^{10}}, 2^{-10^{10}}) each took math-verify's whole
5 s timeout (6-8 s measured here) of the trainer's main thread; a policy writing them stalled every
GRPO step by seconds per sample. Now compared as strings at once; ordinary answers unchanged."""
from __future__ import annotations

import time

import pytest

from r1mega.judge import is_correct

HUGE = ["9^{9^{9}}", "2^{2^{30}}", "(10^{8})!", "10^{10^{10}} - 10^{10^{10}} + 2", "\\binom{10^{9}}{5*10^{8}}",
        "2^{-10^{10}}", "e^{10^{10}}", "x^{10^{9}}"]


@pytest.mark.parametrize("answer", HUGE)
def test_astronomical_answers_are_judged_at_once(answer):
    start = time.perf_counter()
    found, correct = is_correct(f"<think>2 it is</think> \\boxed{{{answer}}}", "2")
    took = time.perf_counter() - start
    assert found == answer and not correct
    assert took < 2.0, f"{answer}: {took:.1f} s"


@pytest.mark.parametrize("answer,reference", [
    ("2^{10}", "1024"), ("\\frac{10!}{9!}", "10"), ("2^{100}", "1267650600228229401496703205376"),
    ("\\binom{10}{3}", "120"), ("x^2+2x+1", "(x+1)^2"), ("3^{-2}", "1/9"), ("1000!/999!", "1000"),
    ("(9000)!/(8999)!", "9000"), ("2^{3^{2}}", "512"), ("e^{2}", "e^2"), ("\\frac{1}{2}", "0.5")])
def test_ordinary_answers_keep_their_verdict(answer, reference):
    assert is_correct(f"<think>x</think> \\boxed{{{answer}}}", reference) == (answer, True)
