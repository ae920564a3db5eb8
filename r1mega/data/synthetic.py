"""Synthetic verifiable tasks generated in code: multi-digit arithmetic with worked reasoning.

Used by the tiny pretraining/SFT configs (their corpora are made here, nothing downloaded) and
by the R1-Zero demo (the answer is checkable by a rule).
"""
from __future__ import annotations

import random


def arithmetic_problem(rng: random.Random, max_digits: int = 2) -> tuple[str, str, str]:
    """(question, reasoning, answer) for a + b or a - b with operands of up to max_digits digits."""
    a = rng.randrange(10 ** max_digits)
    b = rng.randrange(10 ** max_digits)
    if rng.random() < 0.5:
        question, answer = f"{a}+{b}", a + b
        reasoning = f"{a} plus {b}: units {a % 10}+{b % 10}, total {answer}."
    else:
        a, b = max(a, b), min(a, b)
        question, answer = f"{a}-{b}", a - b
        reasoning = f"{a} minus {b}: {a}-{b} is {answer}."
    return question, reasoning, str(answer)


def pretrain_corpus(num_docs: int, seed: int = 0) -> list[str]:
    """Short documents of worked arithmetic, the 'web text' of the tiny runs."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(2, 5)):
            q, r, a = arithmetic_problem(rng)
            lines.append(f"Q: {q}= {r} A: {a}")
        docs.append("\n".join(lines))
    return docs


def sft_records(num: int, seed: int = 0) -> list[dict]:
    """Chat records in the R1 format: reasoning in <think>...</think>, then the boxed answer."""
    rng = random.Random(seed)
    records = []
    for _ in range(num):
        q, r, a = arithmetic_problem(rng)
        records.append({"messages": [
            {"role": "user", "content": f"What is {q}?"},
            {"role": "assistant", "content": f"<think>{r}</think> The answer is \\boxed{{{a}}}."},
        ]})
    return records
