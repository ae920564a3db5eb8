"""Prompt datasets for RL, evaluation and generation: JSONL files of problems, read by one reader.

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
  language     optional target language of the chain of thought: one of r1mega.judge.LANGUAGES
               (en, zh, fr, de, ru, ja, ...)
  id           optional str/int; default "<file>:<line>"

Every record needs `prompt` or `messages`, and `answer` or `tests`; a bad record raises DataError
naming file:line. `load_prompts` (RL) returns plain dicts (the rewards read them) with every key
present. `read_problems` is the reader under it, with what generation needs as options: records
without answers (`r1mega generate` on any prompts), a chat ending in the assistant's reply (an SFT
record: the reply is dropped, the model answers the user turn before it), and ids that key an
output store (strings, the line number by default, unique in the file).

`PromptOrder` serves them in a deterministic order: each epoch is a fresh shuffle seeded by
(seed, epoch), so the problems of global position p are a pure function of (seed, p): saving p in
a checkpoint is enough to resume exactly, under any number of data-parallel ranks.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
from typing import Optional

from r1mega.data.jsonl import DataError, iter_jsonl
from r1mega.judge.language import LANGUAGES  # the targets the language reward and filter can judge

ROLES = ("system", "user", "assistant")


def parse_problem(where: str, rec: dict, answers: bool = True, sft_chats: bool = False) -> dict:
    """One record, checked, as a dict with every key of the format (see the module docstring).
    answers: the record must say how it is checked (answer or tests). sft_chats: a chat may end with
    the assistant's reply, which is dropped."""
    def bad(msg: str) -> DataError:
        return DataError(f"{where}: {msg}")

    prompt, messages = rec.get("prompt"), rec.get("messages")
    if prompt is None and messages is None:
        raise bad("needs 'prompt' (a string) or 'messages' (a chat)")
    if prompt is not None and messages is not None:
        raise bad("has both 'prompt' and 'messages'; give one (which one is the question is unclear)")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise bad("'prompt' must be a non-empty string")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise bad("'messages' must be a non-empty list of {role, content}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise bad(f"messages[{i}] needs role ({'/'.join(ROLES)}) and string content")
        if sft_chats and messages[-1]["role"] == "assistant" and len(messages) > 1:
            messages = messages[:-1]
        if messages[-1]["role"] != "user":
            raise bad("the last message must be the user's (the model answers it)"
                      + (", or the assistant's reply to it" if sft_chats else ""))
        if not messages[-1]["content"].strip():  # as an empty 'prompt': no question to answer
            raise bad(f"messages[{len(messages) - 1}]: the user's question is empty")
    answer, tests = rec.get("answer"), rec.get("tests")
    if answers and answer is None and tests is None:
        raise bad("needs 'answer' (math) or 'tests' (code) to be checked against")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise bad(f"'answer' must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):  # NaN, Infinity, or 1e400 read as inf
        raise bad(f"'answer' is the non-finite number {answer!r} (NaN/Infinity, or too large for a float: "
                  "write the answer as a string, e.g. \"\\\\infty\" or \"1e400\")")
    if isinstance(answer, str) and not answer.strip():
        raise bad("'answer' is empty: no response can match it (the judge scores every one 0); give the "
                  "reference final answer, or 'tests' for code")
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


def read_problems(path: str, answers: bool = True, sft_chats: bool = False, keyed: bool = False) -> list[dict]:
    """Every record of one JSONL file, checked, in file order. answers, sft_chats: as parse_problem.
    keyed: the ids key an output store (generation): strings, the line number when a record has
    none, and no id twice in the file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: prompt file not found")
    problems, seen = [], {}
    for where, rec in iter_jsonl(path):
        problem = parse_problem(where, rec, answers, sft_chats)
        if keyed:
            pid = problem["id"] = str(rec.get("id", where.rsplit(":", 1)[1]))
            if pid in seen:
                raise DataError(f"{where}: id {pid!r} already used at {seen[pid]}")
            seen[pid] = where
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


def load_prompts(paths: list[str]) -> list[dict]:
    """RL's problems: every record of the JSONL files, each with an answer or tests, in file order."""
    problems: list[dict] = []
    for path in paths:
        if os.path.isfile(path) and not path.endswith((".jsonl", ".json")):
            raise DataError(f"{path}: prompt files are JSONL (one JSON object per line)")
        problems.extend(read_problems(path))
    return problems


def prompts_digest(paths: list[str]) -> str:
    """sha256 over the prompt files' contents, in order: what a GRPO checkpoint's prompt position
    refers to (a resume with other files would continue at a meaningless position)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def check_same_prompts(meta: dict, paths: list[str], where: str) -> None:
    """A run resumed from its own checkpoint must read the prompt files it was saved with."""
    from r1mega.errors import ConfigError

    saved = meta.get("prompts_sha256")
    if saved is not None and paths and saved != prompts_digest(paths):
        raise ConfigError("rl.prompts", f"{where} was saved at a position in other prompt files (their content "
                          f"differs); resuming would continue at a meaningless position. Give the same files, or "
                          f"start a new train.run_dir with train.load={where}")


def check_prompts_fit(problems: list[dict], count_tokens, positions: int, what: str = "rl.prompts") -> None:
    """Every rendered prompt must leave room in the model's positions; the first that does not is named."""
    from r1mega.errors import ConfigError

    too_long = []
    for p in problems:
        n = count_tokens(p)
        if n >= positions:
            too_long.append((p, n))
    if too_long:
        p, n = too_long[0]
        raise ConfigError(what, f"{p.get('where', p.get('id'))}: prompt has {n} tokens but the model has {positions} "
                          f"positions (max_position_embeddings)"
                          + (f"; {len(too_long)} prompts are too long" if len(too_long) > 1 else "")
                          + "; shorten or remove them")


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
