"""Named values (a=1, b=2, c=3) against bare ones ((1, 2, 3)): compared in the names' order
(r1mega/judge/assignments.py). math-verify read the named answer as the set {1, 2, 3}, so every
ordering of the values earned the accuracy reward, and one bare answer matched x=1, y=2 and x=2, y=1."""
import pytest

from r1mega.judge import equivalent
from r1mega.judge.assignments import named_values
from r1mega.rl.rewards import accuracy_reward


@pytest.mark.parametrize("reference,answer", [
    ("a=1, b=2, c=3", "(3,2,1)"), ("a=1, b=2, c=3", "(2,1,3)"), ("a=1, b=2, c=3", "\\{3,1,2\\}"), ("x=1, y=2", "(2,1)"),
    ("x=2, y=1", "(1,2)"), ("x=1, y=2", "\\{1,2\\}"), ("x=1, y=2", "1, 2"), ("a_1 = 1, a_2 = 2", "(2, 1)"),
    ("a=1, b=2, c=3", "(1,2)"), ("(2,1)", "x=1, y=2"), ("x=1, y=2", "x=2, y=1"),
])
def test_a_permutation_of_named_values_is_wrong(reference, answer):
    assert not equivalent(reference, answer)
    assert accuracy_reward(f"<think>guess</think> \\boxed{{{answer}}}", {"answer": reference}) == 0.0


@pytest.mark.parametrize("reference,answer", [
    ("a=1, b=2, c=3", "(1,2,3)"), ("x=1, y=2", "(1,2)"), ("y=2, x=1", "(1,2)"), ("a_1 = 1, a_2 = 2", "(1, 2)"),
    ("x = \\frac{1}{2}, y = 0.5", "(0.5, \\frac{1}{2})"), ("(1,2)", "x=1, y=2"), ("x=1, y=2", "y=2, x=1"),
    # one unknown's solutions stay a set; bare against bare is math-verify's
    ("x=1, x=2", "\\{2,1\\}"), ("x=1, x=2", "2, 1"), ("\\{1,2\\}", "(2,1)"), ("(2,1)", "(2,1)"), ("x=3", "3"),
])
def test_named_values_in_the_names_order_are_right(reference, answer):
    assert accuracy_reward(f"<think>work</think> \\boxed{{{answer}}}", {"answer": reference}) == 1.0


def test_names_are_ordered_with_their_numbers_as_numbers():
    from math_verify import parse

    values = named_values(parse("$a_{10} = 10, a_2 = 2, a_1 = 1$")[0])
    assert [int(v) for v in values] == [1, 2, 10]
