"""Rule-based rewards, pluggable by name (`rl.rewards: [accuracy, format, language, code]`).

Each reward is f(completion text, sample) -> float, where the sample carries the reference
answer (or tests, or the target language). The step's reward is their sum.
  accuracy  1 if the final answer (the last \\boxed{...}, else the text after the last "A:")
            equals the reference by math-verify (symbolic/numeric equivalence), else 0
  format    1 if the completion is "<think> ... </think>" followed by an answer, else 0
  language  share of the chain-of-thought's words in the target language (R1's consistency reward)
  code      1 if the code block passes the sample's tests in the sandbox, else 0
"""
from __future__ import annotations

import re
from typing import Callable

from r1mega.rl.sandbox import run_tests

THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(\S.*)$", re.DOTALL)
BOXED = "\\boxed{"


def final_answer(text: str) -> str | None:
    at = text.rfind(BOXED)
    if at >= 0:  # balanced braces after the last \boxed{
        depth, i = 1, at + len(BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        return text[at + len(BOXED): i - 1] if depth == 0 else None
    m = re.findall(r"A:\s*([^\n]+)", text)
    return m[-1].strip() if m else None


def accuracy_reward(text: str, sample: dict) -> float:
    from math_verify import parse, verify

    answer = final_answer(text)
    if answer is None:
        return 0.0
    gold = str(sample["answer"])
    if answer.strip() == gold.strip():
        return 1.0
    try:
        return float(verify(parse(f"${gold}$"), parse(f"${answer}$")))
    except Exception:  # math-verify could not parse: not equal
        return 0.0


def format_reward(text: str, sample: dict) -> float:
    return 1.0 if THINK.match(text) else 0.0


def language_reward(text: str, sample: dict) -> float:
    """Share of words of the chain of thought written in the target language (en or zh)."""
    m = THINK.match(text)
    cot = m.group(1) if m else text
    lang = sample.get("language", "en")
    words = re.findall(r"[A-Za-z]+|[\u4e00-\u9fff]|[^\sA-Za-z\u4e00-\u9fff\d\W]+", cot)
    if not words:
        return 0.0
    if lang == "zh":
        hits = sum(1 for w in words if re.fullmatch(r"[\u4e00-\u9fff]", w))
    else:
        hits = sum(1 for w in words if re.fullmatch(r"[A-Za-z]+", w))
    return hits / len(words)


def code_reward(text: str, sample: dict) -> float:
    blocks = re.findall(r"```(?:python)?\n(.*?)```", text, re.DOTALL)
    if not blocks:
        return 0.0
    return 1.0 if run_tests(blocks[-1], sample["tests"]).ok else 0.0


REWARDS: dict[str, Callable[[str, dict], float]] = {
    "accuracy": accuracy_reward, "format": format_reward, "language": language_reward, "code": code_reward,
}


def total_reward(names: list[str], text: str, sample: dict) -> float:
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"rl.rewards: unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    return sum(REWARDS[n](text, sample) for n in names)
