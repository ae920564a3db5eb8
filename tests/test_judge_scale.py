"""Small numeric answers are judged at their own scale (r1mega/judge/scale.py).

math-verify's tolerances are absolute (6 decimal places; differences chopped at ~1e-15), so on a problem
whose answer is tiny any tiny answer -- 0.0, 2-2, 10^{-99} -- earned the accuracy reward."""
import pytest

from r1mega.judge import equivalent, is_correct
from r1mega.judge.scale import FLOAT_ROUNDING, NUMERIC_PRECISION, tolerances
from r1mega.rl.rewards import accuracy_reward

PLANCK = "6.626\\times 10^{-34}"


@pytest.mark.parametrize("reference,answer", [
    (PLANCK, "0.0"), (PLANCK, "2-2"), (PLANCK, "10^{-99}"), (PLANCK, "10^{-33}"), (PLANCK, "7\\times 10^{-34}"),
    ("0.0000003", "0.0000001"), ("0.0000003", "0.0"), ("2.5e-8", "0.00000001"),
    ("(1.5\\times10^{-7}, 2\\times10^{-8})", "(0.0, 0.0)"), ("x = 2\\times10^{-8}", "x = 0.0"),
    ("\\{10^{-8}, 2\\}", "\\{0.0, 2\\}"), ("1.6\\times 10^{-19}", "1.7\\times10^{-19}"),
])
def test_a_tiny_reference_is_not_matched_by_any_tiny_answer(reference, answer):
    assert not equivalent(reference, answer)
    assert accuracy_reward(f"<think>guess</think> \\boxed{{{answer}}}", {"answer": reference}) == 0.0


@pytest.mark.parametrize("reference,answer", [
    (PLANCK, PLANCK), (PLANCK, "6.626e-34"), (PLANCK, "0.0000000000000000000000000000000006626"),
    ("0.0000003", "3\\times10^{-7}"), ("0.0000003", "\\frac{3}{10^{7}}"), ("2.5e-8", "2.5\\times 10^{-8}"),
    ("1.6\\times 10^{-19}", "1.60\\times10^{-19}"), ("\\frac{1}{3}\\times 10^{-9}", "0.000000000333333"),
    ("(1.5\\times10^{-7}, 2\\times10^{-8})", "(1.5\\times10^{-7}, 2\\times10^{-8})"), ("0.5\\%", "0.005"),
    # at 0.01 and above math-verify's own rule stands
    ("\\frac{1}{3}", "0.333333"), ("\\frac{1}{2}", "0.5"), ("0.1234567", "0.1234568"), ("\\sqrt{2}", "1.414214"),
    ("0.01234567", "0.012346"), ("0", "0.0"),
])
def test_right_answers_stay_right(reference, answer):
    assert is_correct(f"<think>work</think> \\boxed{{{answer}}}", reference) == (answer, True)


def test_tolerances_grow_one_digit_per_factor_of_ten_below_a_hundredth():
    assert tolerances(None, None) == (FLOAT_ROUNDING, NUMERIC_PRECISION)
    assert tolerances(0.5, 0.05, 123.0) == (FLOAT_ROUNDING, NUMERIC_PRECISION)
    assert tolerances(0.005, None) == (FLOAT_ROUNDING + 1, NUMERIC_PRECISION + 1)
    assert tolerances(6.626e-34, 1.0) == (FLOAT_ROUNDING + 32, NUMERIC_PRECISION + 32)
    assert tolerances(1e-320) == (FLOAT_ROUNDING + 306, NUMERIC_PRECISION + 306)  # below a double's normal range
    assert equivalent("10^{-5000}", "10^{-5000}") and not equivalent("10^{-5000}", "10^{-300}")


def test_a_number_beyond_a_doubles_range_sets_no_scale():
    assert tolerances(float("inf"), None) == (FLOAT_ROUNDING, NUMERIC_PRECISION)
    for reference in ("0", "\\emptyset", "5"):  # 1e400 reached math.log10 as inf: OverflowError out of the reward
        assert accuracy_reward("<think>big</think> \\boxed{1e400}", {"answer": reference}) == 0.0
    assert equivalent("10^{400}", "1e400")
