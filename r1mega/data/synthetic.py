"""Synthetic verifiable tasks generated in code: multi-digit arithmetic with worked reasoning.

Used by the tiny pretraining/SFT configs (their corpora are made here, nothing downloaded) and
by the R1-Zero demo (the answer is checkable by a rule); the same tasks posed as prompts with
their answers (`synthetic_prompts`) are GRPO's synthetic questions and the recipe's evaluation.
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


def addition_pair_is_heldout(a: int, b: int) -> bool:
    """A fixed ~30% of the single-digit sums are kept out of RL prompts, for evaluation only."""
    return (a * 7 + b * 3) % 10 < 3


def biased_addition_corpus(num_docs: int, seed: int = 0, correct_rate: float = 0.3) -> list[str]:
    """Single-digit sums whose written answers are right only `correct_rate` of the time and
    otherwise off by one (a + b + 1): a base model that knows the right answer but prefers a
    wrong one - the situation R1-Zero-style RL with a correctness reward is meant to fix."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(3, 8)):
            a, b = rng.randrange(10), rng.randrange(10)
            c = a + b if rng.random() < correct_rate else a + b + 1
            lines.append(f"Q: {a}+{b}= A: {c}")
        docs.append("\n".join(lines))
    return docs


# ---- the pipeline's task: three single-digit addends, a worked thought, a biased last step ----------

def sum3_is_heldout(a: int, b: int, c: int) -> bool:
    """A fixed 30% of the 1000 sums a+b+c (exactly 3 values of c for each a, b) are kept out of RL
    prompts, for evaluation only: 300 held-out problems, 700 RL prompts."""
    return (a * 7 + b * 3 + c) % 10 < 3


def sum3_response(a: int, b: int, c: int, last: int) -> str:
    """The corpus's answer to "Q: a+b+c=": the two partial sums in a thought, then the answer,
    which is the thought's last result (`last`, which the biased corpus may get wrong)."""
    return f" <think>{a}+{b}={a + b}, {a + b}+{c}={last}</think> A: {last}"


def biased_sum3_corpus(num_docs: int, seed: int = 0, correct_rate: float = 0.3) -> list[str]:
    """Sums of three single digits worked in a thought ("Q: 3+4+5= <think>3+4=7, 7+5=12</think> A: 12").
    The first step is always right; the second is right only `correct_rate` of the time and otherwise
    one too high, and the answer follows the thought: a base model that reasons in the paper's format
    but prefers a wrong last step - what RL with a correctness reward is meant to fix."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(2, 4)):
            a, b, c = rng.randrange(10), rng.randrange(10), rng.randrange(10)
            last = a + b + c if rng.random() < correct_rate else a + b + c + 1
            lines.append(f"Q: {a}+{b}+{c}={sum3_response(a, b, c, last)}")
        docs.append("\n".join(lines))
    return docs


# ---- prompt sets with checkable answers, in the corpus's own format ("Q: 23+45=") ----------

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
