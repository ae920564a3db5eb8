"""Probe: a reference in scientific notation (what str(float) makes of a JSON answer such as 1e-05,
or a dataset's "1e+20") was read by math-verify as 1*e + 20 with Euler's e: the right answer
10^{20} scored 0 and the bogus `\\boxed{e+20}` scored 1. Such numbers are now read as m x 10^k."""
import pytest

from r1mega.judge import equivalent, is_correct


@pytest.mark.parametrize("ref, right, bogus", [
    ("1e+20", "100000000000000000000", "e+20"),
    ("1e-05", "0.00001", "e - 5"),
    ("2.5e-3", "\\frac{1}{400}", "2.5e - 3"),
    ("-3E2", "-300", "-3e + 2"),
])
def test_scientific_references_mean_numbers(ref, right, bogus):
    assert is_correct(f"<think>t</think> \\boxed{{{right}}}", ref)[1]
    assert not is_correct(f"<think>t</think> \\boxed{{{bogus}}}", ref)[1]


def test_scientific_answers_are_numbers_too():
    assert equivalent("0.0025", "2.5e-3") and not equivalent("0.0025", "2.6e-3")
    assert equivalent("2e", "2e")  # Euler's e stays e where no exponent follows
