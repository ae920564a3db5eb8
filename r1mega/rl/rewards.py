"""Rule-based rewards, pluggable by name (`rl.rewards: [accuracy, format, language, code]`).

Each reward is f(response text, sample) -> float, where the response is what the model wrote
(including any prefix the template wrote for it, e.g. "<think>\n") and the sample carries the
reference answer (or tests, or the target language). The step's reward is their sum.
  accuracy  1 if the final answer equals the reference by math-verify (symbolic/numeric
            equivalence), else 0. The final answer is the last <answer>...</answer>; without one,
            the last \\boxed{...} outside <think>...</think>; without one, the text after the
            last "A:" outside the thought (the built-in corpus's form). Problems with tests and no
            answer are judged by the code reward.
  format    1 for exactly "<think> non-empty thought </think>" followed by an answer: one non-empty
            <answer>...</answer> with nothing after it, or (chat style, no answer tags) non-empty
            text; each think tag once, nothing before the thought
  language  share of the chain-of-thought's words in the target language (R1's consistency
            reward); the target is the sample's `language`, else rl.language, else en
  code      1 if the code block passes the sample's tests in the sandbox, else 0
"""
from __future__ import annotations

import re
from typing import Callable, Optional

from r1mega.rl.sandbox import run_code, run_tests

THINK = re.compile(r"^\s*<think>(.*?)</think>(.*)$", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
BOXED = "\\boxed{"


def _last_boxed(text: str) -> Optional[str]:
    at = text.rfind(BOXED)
    while at >= 0:  # balanced braces after the last \boxed{ (an unclosed one: look further back)
        depth, i = 1, at + len(BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[at + len(BOXED): i - 1]
        at = text.rfind(BOXED, 0, at)
    return None


def outside_thought(text: str) -> str:
    """The text with every <think>...</think> span removed (an unclosed <think> hides the rest)."""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL)
    at = text.find("<think>")
    return text if at < 0 else text[:at]


def final_answer(text: str) -> Optional[str]:
    answers = ANSWER.findall(text)
    if answers:
        inner = answers[-1]
        boxed = _last_boxed(inner)
        return (boxed if boxed is not None else inner).strip()
    visible = outside_thought(text)
    boxed = _last_boxed(visible)
    if boxed is not None:
        return boxed.strip()
    m = re.findall(r"A:\s*([^\n]+)", visible)
    return m[-1].strip() if m else None


def accuracy_reward(text: str, sample: dict) -> float:
    if sample.get("answer") is None:
        return code_reward(text, sample) if sample.get("tests") is not None else 0.0
    from math_verify import parse, verify

    answer = final_answer(text)
    if answer is None or not answer:
        return 0.0
    gold = str(sample["answer"])
    if answer == gold.strip():
        return 1.0
    try:
        return float(verify(parse(f"${gold}$"), parse(f"${answer}$")))
    except Exception:  # math-verify could not parse: not equal
        return 0.0


def format_reward(text: str, sample: dict) -> float:
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>")):
        return 0.0
    m = THINK.match(text)
    if not m or not m.group(1).strip():
        return 0.0
    after = m.group(2)
    n_open, n_close = after.count("<answer>"), after.count("</answer>")
    if n_open or n_close:
        a = ANSWER.search(after)
        ok = n_open == 1 and n_close == 1 and a is not None and a.group(1).strip() != ""
        return 1.0 if ok and not after[a.end():].strip() else 0.0
    return 1.0 if after.strip() else 0.0  # no answer tags (chat style): the text after the thought


def language_reward(text: str, sample: dict) -> float:
    """Share of words of the chain of thought written in the target language (en or zh)."""
    m = THINK.match(text)
    cot = m.group(1) if m else text
    lang = sample.get("language") or "en"
    words = re.findall(r"[A-Za-z]+|[\u4e00-\u9fff]|[^\sA-Za-z\u4e00-\u9fff\d\W]+", cot)
    if not words:
        return 0.0
    if lang == "zh":
        hits = sum(1 for w in words if re.fullmatch(r"[\u4e00-\u9fff]", w))
    else:
        hits = sum(1 for w in words if re.fullmatch(r"[A-Za-z]+", w))
    return hits / len(words)


def code_reward(text: str, sample: dict) -> float:
    """The last fenced code block outside the thought must pass every test: Python `tests` run after
    it (then `check(entry_point)` when given), or each {input, output} case on stdin/stdout."""
    tests = sample.get("tests")
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", outside_thought(text), re.DOTALL)
    if tests is None or not blocks:
        return 0.0
    code = blocks[-1]
    if isinstance(tests, list):
        for case in tests:
            res = run_code(code, stdin=case["input"])
            if not res.ok or res.stdout.split() != case["output"].split():
                return 0.0
        return 1.0
    if sample.get("entry_point"):
        tests = f"{tests}\n\ncheck({sample['entry_point']})"
    return 1.0 if run_tests(code, tests).ok else 0.0


REWARDS: dict[str, Callable[[str, dict], float]] = {
    "accuracy": accuracy_reward, "format": format_reward, "language": language_reward, "code": code_reward,
}


def reward_terms(names: list[str], text: str, sample: dict) -> dict[str, float]:
    """Each named reward of one response (the step's reward is their sum)."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"rl.rewards: unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    return {n: float(REWARDS[n](text, sample)) for n in names}


def total_reward(names: list[str], text: str, sample: dict) -> float:
    return sum(reward_terms(names, text, sample).values())
