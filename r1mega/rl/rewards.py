"""Rule-based rewards, pluggable by name (`rl.rewards: [accuracy, format, language, code]`).

Each reward is f(response text, sample, programs) -> float, where the response is what the model
wrote (including any prefix the template wrote for it, e.g. "<think>\n"), the sample carries the
reference answer (or tests, or the target language), and programs holds sandbox results run ahead
for the whole batch (run_programs; None: run here). The step's reward is their sum. Every reward reads
the response through r1mega.judge, the same judge as `r1mega eval` and the rejection filters:
  accuracy  1 if the final answer -- after the thought only: the last <answer>...</answer>, else the
            last \\boxed{...}, else the fallback (rl.answer_fallback, r1mega/judge/answers.py) --
            equals the reference (math-verify; NaN never), else 0. Problems with tests and no
            answer are judged by the code reward.
  format    1 for exactly "<think> non-empty thought </think>" then an answer: one non-empty
            <answer>...</answer> with nothing after it, or (chat style) non-empty text; no answer tags
            inside the thought (r1mega/judge/format.py)
  language  share of the chain-of-thought's words in the target language (R1's consistency
            reward, r1mega/judge/language.py); a thought without words (pure mathematics) scores 1;
            the target is the sample's `language`, else rl.language, else en
  code      1 if the last Python block after the thought (r1mega/judge/code_blocks.py) passes every
            test of the sample in the sandbox (r1mega/sandbox/isolation.py), else 0:
            `tests` as Python run after the code (then `check(entry_point)` when given),
            or a list of {input, output} stdin/stdout cases (once one case fails, the
            program's other cases are not run on). The tests run in a judge process that
            never held the program's code, calling its functions through plain data
            (r1mega/sandbox/code_tests.py)
A response longer than r1mega.judge.MAX_RESPONSE_CHARS scores 0 on every reward.
GRPO adds DAPO's overlong shaping (overlong_shaping) to that sum, and judges a rollout once
per model replica.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator, NamedTuple, Optional

import torch
import torch.distributed as dist

from r1mega import judge
from r1mega.judge.response import split_thought
from r1mega.parallel.layout import ParallelState
from r1mega.sandbox.isolation import Job, SandboxResult, run_many

Programs = dict[tuple, SandboxResult]  # sandbox results by job, run ahead for a batch


def final_answer(text: str, fallback: str = "auto") -> Optional[str]:
    return judge.final_answer(text, fallback)


def accuracy_reward(text: str, sample: dict, programs: Optional[Programs] = None, fallback: str = "auto") -> float:
    if sample.get("answer") is None:
        return code_reward(text, sample, programs) if sample.get("tests") is not None else 0.0
    return float(judge.is_correct(text, sample["answer"], fallback)[1])


def format_reward(text: str, sample: dict, programs: Optional[Programs] = None) -> float:
    return float(judge.well_formed(text))


def language_reward(text: str, sample: dict, programs: Optional[Programs] = None) -> float:
    """Share of words of the chain of thought written in the target language (1 without words)."""
    parts = split_thought(text)
    if parts.over_cap:
        return 0.0
    share = judge.language_share(parts.reasoning_text(text), sample.get("language") or "en")
    return 1.0 if share is None else share


class _Case(NamedTuple):
    key: tuple  # what the sandbox result is kept under in Programs
    job: Job
    expected: Optional[str]  # the stdout a stdin/stdout case must print (None: tests judged apart)


def _code_jobs(text: str, sample: dict) -> Optional[list[_Case]]:
    tests, code = sample.get("tests"), judge.final_code(text)  # the answer's program, not the thought's
    if tests is None or code is None:
        return None
    if isinstance(tests, list):  # stdin/stdout cases, judged here (outside the sandbox)
        return [_Case(("stdio", code, str(c["input"]), str(c["output"])), Job(code, stdin=str(c["input"])),
                      str(c["output"])) for c in tests]
    entry = sample.get("entry_point")
    return [_Case(("tests", code, tests, entry), Job(code, tests=tests, entry_point=entry, judged=True), None)]  # judged apart


def _passes(res: SandboxResult, expected: Optional[str]) -> bool:
    return res.ok and (expected is None or res.stdout.split() == expected.split())


def _run_cases(programs: list[list[_Case]]) -> Programs:
    """The cases of several programs at once; a program's cases pass only together, so once one of
    them fails its others are not run on (run_many's groups): a looping program costs one case's limits."""
    unique: dict[tuple, tuple[_Case, set]] = {}
    for cases in programs:
        group = tuple(c.key for c in cases)
        for c in cases:
            unique.setdefault(c.key, (c, set()))[1].add(group)
    todo = list(unique.values())
    results = run_many([c.job for c, _ in todo], groups=[g for _, g in todo],
                       passed=lambda i, res: _passes(res, todo[i][0].expected))
    return {c.key: res for (c, _), res in zip(todo, results)}


def code_reward(text: str, sample: dict, programs: Optional[Programs] = None) -> float:
    cases = _code_jobs(text, sample)
    if cases is None:
        return 0.0
    programs = programs or {}
    results = {**_run_cases([[c for c in cases if c.key not in programs]]), **programs}
    return float(all(_passes(results[c.key], c.expected) for c in cases))


def run_programs(texts: list[str], samples: list[dict]) -> Programs:
    """Every program of a batch at once on the sandbox's worker pool; pass the result as `programs`
    to the rewards of that batch so none runs again one by one."""
    return _run_cases([cases for t, s in zip(texts, samples) if (cases := _code_jobs(t, s))])


@contextmanager
def code_rewards_in_parallel(texts: list[str], samples: list[dict]) -> Iterator[Programs]:
    """`with code_rewards_in_parallel(texts, samples) as programs:` -- run_programs as a block."""
    yield run_programs(texts, samples)


REWARDS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy_reward, "format": format_reward, "language": language_reward, "code": code_reward,
}


def reward_terms(names: list[str], text: str, sample: dict, programs: Optional[Programs] = None,
                 fallback: str = "auto") -> dict[str, float]:
    """Each named reward of one response (the step's reward is their sum); fallback: how the
    accuracy reward reads an answer without tags or a box (rl.answer_fallback)."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"rl.rewards: unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    rewards = {**REWARDS, "accuracy": partial(accuracy_reward, fallback=fallback)}
    return {n: float(rewards[n](text, sample, programs)) for n in names}


def total_reward(names: list[str], text: str, sample: dict, programs: Optional[Programs] = None,
                 fallback: str = "auto") -> float:
    return sum(reward_terms(names, text, sample, programs, fallback).values())


def overlong_shaping(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max - buffer tokens, then falling linearly to
    -penalty at max_new_tokens."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * (over / buffer).clamp(max=1.0)


# ---- judged once per model replica -------------------------------------------------------------
# The ranks of one DP slice (its TP, CP and PP ranks) hold the same responses, but judging them is
# not a pure function of the text: sandboxed programs race the wall clock and each process has its
# own hash seed (`print(*{"a", "b"})` prints in another order per run), and math-verify's timeouts
# are wall-clock. Each rank judging for itself could give the shards of one model different rewards,
# hence different advantages and gradients. So the slice's first rank (tp = cp = pp = 0) judges, and
# the others receive its reward table; they run no programs at all (the sandbox load is not
# multiplied by tp x cp x pp either).

SLICE_GROUPS = ("pp", "cp", "tp")  # the broadcast order that carries the first rank's table to all


def judge_once(ps: ParallelState, names: list[str], n: int, judge: Callable[[], list[dict[str, float]]],
               device: torch.device) -> list[dict[str, float]]:
    """judge() -> one {reward name: value} per response, run on the slice's first rank only; every
    rank of the slice returns that rank's values."""
    names = list(dict.fromkeys(names))
    if all(ps.r(g) == 0 for g in SLICE_GROUPS):
        terms = judge()
        table = torch.tensor([[float(t[k]) for k in names] for t in terms], dtype=torch.float64,
                             device=device).reshape(n, len(names))
    else:
        table = torch.zeros(n, len(names), dtype=torch.float64, device=device)
    for g in SLICE_GROUPS:  # along pp from stage 0 (tp = cp = 0), then cp, then tp: each source already holds it
        if ps.g(g) is not None:
            dist.broadcast(table, src=ps.members[g][0], group=ps.g(g))
    return [dict(zip(names, row)) for row in table.tolist()]


def judge_batch(ps: ParallelState, names: list[str], texts: list[str], problems: list[dict], fallback: str,
                device: torch.device) -> list[dict[str, float]]:
    """Each response's rewards, judged once per model replica with every program of the batch run
    together: what the rollout and the held-out evaluation both score with."""
    def judge() -> list[dict[str, float]]:
        programs = run_programs(texts, problems)
        return [reward_terms(names, t, p, programs, fallback) for t, p in zip(texts, problems)]

    return judge_once(ps, names, len(texts), judge, device)


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[n_groups] True where every output of the group got the same reward (zero advantage)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)
