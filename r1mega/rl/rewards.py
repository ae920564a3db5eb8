"""Rule-based rewards, pluggable by name (`rl.rewards: [accuracy, format, language, code]`).

Each reward is f(completion text, sample) -> float, where the sample carries the reference
answer (or tests, or the target language). The step's reward is their sum.
  accuracy  1 if the final answer (the last \\boxed{...}, else the text after the last "A:")
            equals the reference by math-verify (symbolic/numeric equivalence), else 0
  format    1 if the completion is "<think> ... </think>" followed by an answer, else 0
  language  share of the chain-of-thought's words in the target language (R1's consistency reward)
  code      1 if the last code block passes every test of the sample in the sandbox
            (r1mega/rl/sandbox.py), else 0: `tests` as Python run after the code (then
            `check(entry_point)` when given), or a list of {input, output} stdin/stdout cases.
            Assert tests of the shapes in r1mega/rl/code_tests.py are judged in the trainer on
            the values the sandbox returns (forge-proof); other test code runs in the sandbox
"""
from __future__ import annotations

import functools
import json
import re
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from r1mega.rl import code_tests
from r1mega.rl.sandbox import Job, SandboxResult, run_many

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


CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_prefetched: dict[tuple, SandboxResult] = {}  # filled by code_rewards_in_parallel for its block


def _code_jobs(text: str, sample: dict) -> Optional[list[Job]]:
    tests, blocks = sample.get("tests"), CODE_BLOCK.findall(text)
    if tests is None or not blocks:
        return None
    code = blocks[-1]
    if isinstance(tests, list):  # stdin/stdout cases, judged here (outside the sandbox)
        return [Job(code, stdin=str(case["input"])) for case in tests]
    calls = _call_tests(tests, sample.get("entry_point"))
    if calls is not None:  # judged here on returned values: the program never sees what is expected
        return [Job(code, calls=calls.payload())]
    if sample.get("entry_point"):
        tests = f"{tests}\n\ncheck({sample['entry_point']})"
    return [Job(code, tests=tests)]


@functools.lru_cache(maxsize=4096)  # a prompt's tests are parsed once for all its samples
def _call_tests(tests: str, entry_point: Optional[str]) -> Optional[code_tests.CallTests]:
    return code_tests.parse(tests, entry_point)


def _key(job: Job) -> tuple:
    return job.code, job.stdin, job.tests, json.dumps(job.calls)


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
    res = results[_key(jobs[0])]
    if jobs[0].calls is not None:
        return float(res.ok and _call_tests(tests, sample.get("entry_point")).judge(res.values))
    return float(res.ok)


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


def total_reward(names: list[str], text: str, sample: dict) -> float:
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"rl.rewards: unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    return sum(REWARDS[n](text, sample) for n in names)
