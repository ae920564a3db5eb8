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
  code      1 if the last code block outside the thought passes every test of the sample in the
            sandbox (r1mega/sandbox/isolation.py), else 0: `tests` as Python run after the code (then
            `check(entry_point)` when given), or a list of {input, output} stdin/stdout cases.
            Tests run in a judge interpreter that never held the program's code, calling the
            program's functions through plain data (r1mega/sandbox/code_tests.py)
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from r1mega.sandbox.isolation import Job, SandboxResult, run_many

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


CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_prefetched: dict[tuple, SandboxResult] = {}  # filled by code_rewards_in_parallel for its block


def _code_jobs(text: str, sample: dict) -> Optional[list[Job]]:
    tests, blocks = sample.get("tests"), CODE_BLOCK.findall(outside_thought(text))  # the answer, not the thought
    if tests is None or not blocks:
        return None
    code = blocks[-1]
    if isinstance(tests, list):  # stdin/stdout cases, judged here (outside the sandbox)
        return [Job(code, stdin=str(case["input"])) for case in tests]
    return [Job(code, tests=tests, entry_point=sample.get("entry_point"), judged=True)]  # judged apart from it


def _key(job: Job) -> tuple:
    return job.code, job.stdin, job.tests, job.entry_point


def code_reward(text: str, sample: dict) -> float:
    jobs = _code_jobs(text, sample)
    if jobs is None:
        return 0.0
    missing = [j for j in jobs if _key(j) not in _prefetched]
    results = dict(zip(map(_key, missing), run_many(missing)))
    results.update({_key(j): _prefetched[_key(j)] for j in jobs if _key(j) in _prefetched})
    tests = sample["tests"]
    if isinstance(tests, list):
        return float(all(results[_key(j)].ok and results[_key(j)].stdout.split() == str(case["output"]).split()
                         for j, case in zip(jobs, tests)))
    return float(results[_key(jobs[0])].ok)


@contextmanager
def code_rewards_in_parallel(texts: list[str], samples: list[dict]) -> Iterator[None]:
    """Runs every program of a batch at once on the sandbox's worker pool; code_reward calls
    inside the block (through any reward) reuse those results instead of running one by one."""
    jobs = {_key(j): j for t, s in zip(texts, samples) for j in (_code_jobs(t, s) or [])}
    _prefetched.update(zip(jobs, run_many(list(jobs.values()))))
    try:
        yield
    finally:
        _prefetched.clear()


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
