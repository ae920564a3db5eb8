"""Prompt sets with checkable answers. The built-in one is the synthetic arithmetic of
`data/synthetic.py`, posed in the pretraining corpus's own format ("Q: 23+45=")."""
from __future__ import annotations

import random

from r1mega.data.synthetic import addition_pair_is_heldout, arithmetic_problem


def arithmetic_prompts(n: int, seed: int, max_digits: int = 2) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, _, a = arithmetic_problem(rng, max_digits)
        out.append({"prompt": f"Q: {q}= ", "answer": a})
    return out


def stops_after_answer(text: str) -> bool:
    """The corpus ends an answer with a newline after "A: <number>"."""
    at = text.rfind("A:")
    return at >= 0 and "\n" in text[at:]


def addition_prompts(n: int, seed: int, heldout: bool) -> list[dict]:
    """Single-digit sums in the biased corpus's format, from the RL or the held-out split."""
    pairs = [(a, b) for a in range(10) for b in range(10) if addition_pair_is_heldout(a, b) == heldout]
    rng = random.Random(seed)
    if n <= 0:
        return [{"prompt": f"Q: {a}+{b}=", "answer": str(a + b)} for a, b in pairs]
    return [{"prompt": f"Q: {a}+{b}=", "answer": str(a + b)} for a, b in (rng.choice(pairs) for _ in range(n))]


TASKS = {"arithmetic": arithmetic_prompts}
