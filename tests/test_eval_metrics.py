"""pass@k / cons@k arithmetic on crafted cases (no model)."""
import math
from itertools import combinations

import pytest

from r1mega.eval.metrics import (
    ProblemScore, cons_correct, equivalent, majority_vote, pass_at_k, score_problem, summarize,
)


def brute_pass_at_k(n, c, k):
    """Exact: share of k-subsets of n samples (first c correct) that contain a correct one."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_and_closed_form():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the mean correctness
    # large n stays finite and equals the binomial ratio
    n, c, k = 1000, 7, 64
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-9)
    assert pass_at_k(64, 0, 64) == 0.0 and pass_at_k(64, 1, 64) == 1.0
    with pytest.raises(ValueError, match="at least 8 samples"):
        pass_at_k(4, 1, 8)


def test_equivalent_answers_vote_together():
    assert equivalent("1/2", "0.5") and equivalent("0.5", "\\frac{1}{2}") and equivalent("1/2", "\\frac{1}{2}")
    assert not equivalent("1/2", "2") and equivalent("B", " b ")
    # three spellings of 1/2 outvote two 3s, though "3" alone is the most frequent string
    vote = majority_vote(["3", "1/2", "0.5", "3", "\\frac{1}{2}"])
    assert (vote.answer, vote.first, vote.votes, vote.clusters) == ("1/2", 1, 3, 2)
    # a caller's own equality (e.g. exact program text for code problems)
    assert majority_vote(["a", "A", "A"], same=lambda x, y: x == y).answer == "A"


def test_ties_go_to_the_first_seen_cluster_and_missing_answers_never_win():
    assert majority_vote(["7", "5", "5", "7"]).answer == "7"
    assert majority_vote(["5", "7", "7", "5"]).answer == "5"
    # four samples without an answer are the largest group, but they do not vote
    vote = majority_vote([None, None, "4", None, None])
    assert (vote.answer, vote.votes) == ("4", 1)
    assert majority_vote([None, None]).answer is None


def test_problem_scores_and_summary():
    assert cons_correct(["3", "1/2", "0.5", "3", "\\frac{1}{2}"], "0.5")
    assert not cons_correct(["3", "3", "0.5"], "0.5")
    # k=4: two correct in different spellings, one wrong, one missing -> cons right, pass@1 = 0.5
    a = score_problem([True, False, True, False], ["1/2", "3", "\\frac{1}{2}", None])
    assert (a.n, a.correct, a.cons, a.answered) == (4, 2, True, 3)
    # all wrong, with the wrong answers agreeing
    b = score_problem([False] * 4, ["2", "2", "3", None])
    assert (b.correct, b.cons) == (0, False)
    # nothing answered: cons is wrong, not an error
    c = score_problem([False] * 4, [None] * 4)
    assert not c.cons and c.answered == 0
    s = summarize([a, b, c])
    assert s["problems"] == 3 and s["samples"] == 4
    assert s["pass@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert s["cons@4"] == pytest.approx(1 / 3)
    assert s["pass@2"] == pytest.approx((1 - 1 / 6) / 3)  # 1 - C(2,2)/C(4,2)
    assert s["pass@4"] == pytest.approx(1 / 3)
    assert s["answer_rate"] == pytest.approx((3 / 4 + 3 / 4 + 0) / 3)


def test_k_equals_one():
    s = summarize([ProblemScore(1, 1, True, 1), ProblemScore(1, 0, False, 1), ProblemScore(1, 0, False, 0)])
    assert s["pass@1"] == pytest.approx(1 / 3) and s["cons@1"] == pytest.approx(1 / 3)
    assert "pass@2" not in s
    # with one sample the vote is that sample's answer
    assert score_problem([True], ["1/2"]).cons and not score_problem([False], [None]).cons
    assert cons_correct(["1/2"], "0.5") and not cons_correct([None], "0.5")


def test_a_multiple_choice_vote_counts_options_not_spellings():
    from r1mega.eval.benchmark import score_benchmark

    texts = ["<think>t</think> \\boxed{" + a + "}" for a in ("(B) 12", "B", "C", "C", "\\text{(B)}")]
    summary, scores = score_benchmark([{"id": "p", "answer": "B"}], {"p": texts})
    assert (scores[0].correct, scores[0].cons) == (3, True)  # B three times outvotes C twice
    summary, scores = score_benchmark([{"id": "p", "answer": "C"}], {"p": texts})
    assert (scores[0].correct, scores[0].cons) == (2, False)
