"""An answer's condition on one unknown against a reference interval (judge/intervals.py): math-verify
read `x > 5` as (5, \\infty) only on the reference's side, so `\\boxed{x > 5}` scored 0 against
`(5, \\infty)`. A condition is now its solution set where the other side is an interval; nothing else
changes (hedges with \\lor stay refused, wrong sets stay wrong, numbers are not sets)."""
import pytest

from r1mega.judge.answers import is_correct

RIGHT = [
    ("(5, \\infty)", "\\boxed{x > 5}"),
    ("(5, \\infty)", "\\boxed{5 < x}"),
    ("[2, 3]", "\\boxed{2 \\le x \\le 3}"),
    ("[-1, 1]", "\\boxed{x^2 \\le 1}"),
    ("(-\\infty, 4]", "The answer is \\boxed{t \\leq 4}."),
    ("x > 5", "\\boxed{(5, \\infty)}"),  # held before: the reference's side
]

WRONG = [
    ("(5, \\infty)", "\\boxed{x \\ge 5}"),  # the endpoint
    ("(5, \\infty)", "\\boxed{x > 6}"),
    ("(0, 1)", "\\boxed{0 < x < 2}"),
    ("(-\\infty, 3) \\cup (5, \\infty)", "\\boxed{x < 3}"),
    ("(5, \\infty)", "\\boxed{x > 5 \\lor x < 0}"),
    ("(5, \\infty)", "\\boxed{x \\ne 5}"),
    ("(5, \\infty)", "\\boxed{x > 5, y > 2}"),  # two unknowns
    ("5", "\\boxed{x > 5}"),  # a number is not a set
    ("(5, \\infty)", "\\boxed{x^{97} - 3x^{45} + x^{7} - 1 > 0}"),  # within the judge's CPU budget
]


@pytest.mark.parametrize("reference,response", RIGHT)
def test_a_condition_equal_to_the_reference_interval_scores(reference, response):
    assert is_correct(response, reference)[1]


@pytest.mark.parametrize("reference,response", WRONG)
def test_other_sets_and_non_sets_do_not(reference, response):
    assert not is_correct(response, reference)[1]
