"""Prompt sets with checkable answers. The built-in one is the synthetic arithmetic of
`data/synthetic.py`, posed in the pretraining corpus's own format ("Q: 23+45=")."""
from __future__ import annotations

import random

from r1mega.data.synthetic import addition_pair_is_heldout, arithmetic_problem, sum3_is_heldout


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


def sum3_prompts(n: int, seed: int, heldout: bool) -> list[dict]:
    """Sums of three single digits ("Q: 3+4+5="), from the RL (700) or the held-out (300) split;
    n <= 0: the whole split in order, else n drawn with replacement."""
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10) if sum3_is_heldout(a, b, c) == heldout]
    if n > 0:
        rng = random.Random(seed)
        triples = [rng.choice(triples) for _ in range(n)]
    return [{"prompt": f"Q: {a}+{b}+{c}=", "answer": str(a + b + c)} for a, b, c in triples]


def synthetic_prompts(kind: str, n: int, seed: int, heldout: bool) -> list[dict]:
    """Problems of a built-in corpus (`data.synthetic`): n RL prompts drawn with `seed`, or its
    held-out split (the whole split for the fixed tasks, n seeded problems for "arithmetic")."""
    if kind == "addition":
        return addition_prompts(0 if heldout else n, seed, heldout)
    if kind == "sum3":
        return sum3_prompts(0 if heldout else n, seed, heldout)
    return arithmetic_prompts(n, 10_007 if heldout else seed)


TASKS = {"arithmetic": arithmetic_prompts}
