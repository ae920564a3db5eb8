"""Prompt datasets for RL and evaluation: JSONL files of problems with checkable answers.

Record format, one JSON object per line (blank lines are skipped):

    {"prompt": "What is 2+3?", "answer": "5"}                                    math
    {"messages": [{"role": "user", "content": "..."}], "answer": "\\frac{1}{2}"}     math, chat form
    {"prompt": "Write f(x) returning x+1.", "tests": "assert f(1) == 2"}            code, asserts
    {"prompt": "...", "tests": "def check(c):\\n    assert c(1) == 2", "entry_point": "f"}   HumanEval style
    {"prompt": "Read n, print n*2.", "tests": [{"input": "3\\n", "output": "6\\n"}]}    code, stdin/stdout

  prompt       str: the question (rendered by the template: raw, r1_zero or chat)
  messages     list of {"role": system|user|assistant, "content": str}, instead of `prompt`; the
               raw and r1_zero templates use the content of its last user message
  answer       str or number: the reference final answer (math-verify decides equivalence)
  tests        str of Python run after the generated code, or a list of {"input", "output"} cases
  entry_point  optional str: the function `check(entry_point)` is called with (with `tests` as str)
  language     optional "en" | "zh": target language of the chain of thought
  id           optional str/int; default "<file>:<line>"

Every record needs `prompt` or `messages`, and `answer` or `tests`; a bad record raises DataError
naming file:line. `load_prompts` returns plain dicts (the rewards read them) with every key present.

`PromptOrder` serves them in a deterministic order: each epoch is a fresh shuffle seeded by
(seed, epoch), so the problems of global position p are a pure function of (seed, p): saving p in
a checkpoint is enough to resume exactly, under any number of data-parallel ranks.
"""
from __future__ import annotations

import os
import random
from typing import Optional

from r1mega.data.jsonl import DataError, iter_jsonl

ROLES = ("system", "user", "assistant")
LANGUAGES = ("en", "zh")


def _problem(where: str, rec: dict) -> dict:
    def bad(msg: str) -> DataError:
        return DataError(f"{where}: {msg}")

    prompt, messages = rec.get("prompt"), rec.get("messages")
    if prompt is None and messages is None:
        raise bad("needs 'prompt' (a string) or 'messages' (a chat)")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise bad("'prompt' must be a non-empty string")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise bad("'messages' must be a non-empty list of {role, content}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise bad(f"messages[{i}] needs role ({'/'.join(ROLES)}) and string content")
        if messages[-1]["role"] != "user":
            raise bad("the last message must be the user's (the model answers it)")
    answer, tests = rec.get("answer"), rec.get("tests")
    if answer is None and tests is None:
        raise bad("needs 'answer' (math) or 'tests' (code) to be checked against")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise bad(f"'answer' must be a string or a number, got {type(answer).__name__}")
    if tests is not None:
        if isinstance(tests, list):
            for i, case in enumerate(tests):
                if not (isinstance(case, dict) and isinstance(case.get("input"), str)
                        and isinstance(case.get("output"), str)):
                    raise bad(f"tests[{i}] must be {{\"input\": str, \"output\": str}}")
            if not tests:
                raise bad("'tests' is an empty list")
        elif not isinstance(tests, str) or not tests.strip():
            raise bad("'tests' must be Python code (a string) or a list of {input, output} cases")
    entry = rec.get("entry_point")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise bad(f"'entry_point' must be a Python identifier, got {entry!r}")
    if entry is not None and not isinstance(tests, str):
        raise bad("'entry_point' goes with 'tests' given as Python code")
    lang = rec.get("language")
    if lang is not None and lang not in LANGUAGES:
        raise bad(f"'language' must be one of {LANGUAGES}, got {lang!r}")
    pid = rec.get("id", where)
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise bad(f"'id' must be a string or an integer, got {type(pid).__name__}")
    return {"id": pid, "prompt": prompt, "messages": messages,
            "answer": None if answer is None else str(answer), "tests": tests, "entry_point": entry,
            "language": lang, "where": where}


def load_prompts(paths: list[str]) -> list[dict]:
    """Read and check every record of the JSONL files, in file order (see the module docstring)."""
    problems: list[dict] = []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: prompt file not found")
        if not path.endswith((".jsonl", ".json")):
            raise DataError(f"{path}: prompt files are JSONL (one JSON object per line)")
        before = len(problems)
        problems.extend(_problem(where, rec) for where, rec in iter_jsonl(path))
        if len(problems) == before:
            raise DataError(f"{path}: no problems in the file")
    return problems


def question_text(problem: dict) -> str:
    """The question as plain text: `prompt`, else the last user message's content."""
    if problem.get("prompt") is not None:
        return problem["prompt"]
    return problem["messages"][-1]["content"]


class PromptOrder:
    """Problems in a seeded order, epoch after epoch: `take(position, n)` is a pure function."""

    def __init__(self, problems: list[dict], seed: int):
        if not problems:
            raise DataError("no problems to draw prompts from")
        self.problems, self.seed = problems, seed
        self._epoch: Optional[int] = None
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._order = list(range(len(self.problems)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order

    def epoch_of(self, position: int) -> int:
        return position // len(self.problems)

    def take(self, position: int, n: int) -> list[dict]:
        """Problems at global positions [position, position + n), crossing epochs as needed."""
        out, size = [], len(self.problems)
        for p in range(position, position + n):
            out.append(self.problems[self.order(p // size)[p % size]])
        return out
