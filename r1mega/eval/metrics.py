"""The numbers DeepSeek-R1 reports, from k sampled completions per problem.

  pass@1   mean correctness over the k samples of a problem (then averaged over problems)
  pass@k   unbiased estimator 1 - C(n-c, k) / C(n, k) from n samples with c correct (Chen et al.,
           2021), computed as a product so large n does not overflow
  cons@k   majority vote: final answers that are equivalent (math-verify: 1/2, 0.5, \\frac{1}{2})
           form one cluster and vote together; a sample with no final answer never votes. Ties go
           to the cluster seen first (lowest sample index), so the vote is deterministic.
  greedy   accuracy of the temperature-0 completion

Answer equivalence and correctness are the judge's (r1mega/judge/answers.py, the accuracy reward's
too): an exact string match, then math-verify, then a whitespace/case-insensitive string match for
answers it cannot parse (multiple-choice letters, words); NaN is never an answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from r1mega.judge.answers import equivalent


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    miss = 1.0  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


@dataclass
class Vote:
    answer: Optional[str]  # the winning cluster's first answer; None when no sample had an answer
    first: int  # sample index of that answer (-1 when none)
    votes: int  # size of the winning cluster
    clusters: int  # number of distinct answers


def majority_vote(answers: Sequence[Optional[str]], same: Callable[[str, str], bool] = equivalent) -> Vote:
    """Cluster equivalent answers (each joins the first cluster whose first answer it equals) and
    return the largest cluster; ties go to the cluster that appeared first. None never votes."""
    firsts: list[int] = []
    counts: list[int] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for c, f in enumerate(firsts):
            if same(answers[f], a):
                counts[c] += 1
                break
        else:
            firsts.append(i)
            counts.append(1)
    if not firsts:
        return Vote(None, -1, 0, 0)
    best = max(range(len(firsts)), key=lambda c: (counts[c], -c))
    return Vote(answers[firsts[best]], firsts[best], counts[best], len(firsts))


def cons_correct(answers: Sequence[Optional[str]], gold: str) -> bool:
    vote = majority_vote(answers)
    return vote.answer is not None and equivalent(str(gold), vote.answer)


@dataclass
class ProblemScore:
    n: int  # samples
    correct: int  # samples judged correct
    cons: bool  # majority answer correct
    answered: int  # samples with a final answer


def score_problem(correct: Sequence[bool], answers: Sequence[Optional[str]],
                  same: Callable[[str, str], bool] = equivalent) -> ProblemScore:
    """correct[i]: sample i judged right; answers[i]: its final answer (None: none). The vote is
    right when the winning cluster's first sample is."""
    if len(correct) != len(answers):
        raise ValueError(f"{len(correct)} correctness flags for {len(answers)} answers")
    vote = majority_vote(answers, same)
    return ProblemScore(len(correct), sum(map(bool, correct)), vote.first >= 0 and bool(correct[vote.first]),
                        sum(a is not None for a in answers))


def ks_to_report(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def summarize(scores: Sequence[ProblemScore]) -> dict:
    """Benchmark-level numbers: pass@1, pass@k for k in 1, 2, 4 ... n, cons@n, answer rate."""
    if not scores:
        raise ValueError("no problems to summarize")
    n = min(s.n for s in scores)
    if n < 1:
        raise ValueError("a problem has no samples")
    out = {"problems": len(scores), "samples": n,
           "pass@1": sum(s.correct / s.n for s in scores) / len(scores),
           f"cons@{n}": sum(s.cons for s in scores) / len(scores),
           "answer_rate": sum(s.answered / s.n for s in scores) / len(scores)}
    for k in ks_to_report(n):
        if k > 1:
            out[f"pass@{k}"] = sum(pass_at_k(s.n, s.correct, k) for s in scores) / len(scores)
    return out
