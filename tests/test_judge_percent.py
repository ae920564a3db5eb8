"""One percent rule (r1mega/judge/percent.py): X\\% against a plain number N is equal when N = X (the
sign left off) or N = X/100 (its value), in any form of the numbers. math-verify compared integers by
their digits and decimals by value, so 50 and 0.5 matched 50\\% but 50.0 did not, and 12.5 did not match
12.5\\%. A response cannot carry both readings at once."""
import pytest

from r1mega.judge import equivalent
from r1mega.rl.rewards import accuracy_reward

T = "<think>work</think> "


@pytest.mark.parametrize("reference, answer", [
    ("50\\%", "50"), ("50\\%", "50.0"), ("50\\%", "0.5"), ("50\\%", "\\frac{1}{2}"), ("50\\%", "50\\%"),
    ("50\\%", "50 \\text{ percent}"), ("12.5\\%", "12.5"), ("12.5\\%", "0.125"), ("12.5\\%", "\\frac{25}{2}\\%"),
    ("50", "50\\%"), ("0.5", "50\\%"), ("12.5", "12.5\\%"), ("0.125", "12.5\\%"), ("0.5\\%", "0.005"),
])
def test_a_percent_is_its_number_or_its_value(reference, answer):
    assert equivalent(reference, answer)
    assert accuracy_reward(T + "\\boxed{" + answer + "}", {"answer": reference}) == 1.0


@pytest.mark.parametrize("reference, answer", [
    ("50\\%", "0.05"), ("50\\%", "5000\\%"), ("50\\%", "0.5\\%"), ("50", "5\\%"), ("50\\%", "49.9"),
])
def test_other_numbers_are_not(reference, answer):
    assert not equivalent(reference, answer)


@pytest.mark.parametrize("response", [
    "\\boxed{50 \\text{ or } 0.5}", "\\boxed{0.5 \\text{ or } 50\\%}", "\\boxed{50} and \\boxed{0.5}",
    "\\boxed{50, 0.5}", "<answer>50</answer> \\boxed{0.5}", "\\boxed{0.5} and \\boxed{50\\%}",
    "\\boxed{50} and \\boxed{50\\%}",
])
def test_one_response_cannot_claim_both_readings(response):
    for reference in ("50\\%", "50", "0.5") if "0.5} and" not in response else ("50",):
        assert accuracy_reward(T + response, {"answer": reference}) == 0.0


def test_two_forms_of_one_value_are_right_only_where_both_are():
    both = T + "\\boxed{0.5} and \\boxed{50\\%}"  # 0.5 = 50%: the same value, but 0.5 is not fifty
    assert [accuracy_reward(both, {"answer": r}) for r in ("0.5", "50\\%", "\\frac{1}{2}", "50")] == [1, 1, 1, 0]
    swapped = T + "\\boxed{50\\%} and \\boxed{0.5}"
    assert [accuracy_reward(swapped, {"answer": r}) for r in ("0.5", "50\\%", "\\frac{1}{2}", "50")] == [1, 1, 1, 0]
