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


# A decimal mantissa times a power of ten (6.02 x 10^{10}) was a binary float times 10^k: equal to the exact
# number it names only where the float's rounding error happened to vanish (6.02 x 10^{12} matched
# 6020000000000, 6.02 x 10^{10} did not match 60200000000), so right answers to physics and counting problems
# scored 0, by the mantissa and exponent; a JSON float reference (str(6.02e23) = "6.02e+23") too.
@pytest.mark.parametrize("ref, right", [
    ("6.02\\times 10^{10}", "60200000000"),
    ("60200000000", "6.02 \\cdot 10^{10}"),
    ("2.998\\times10^{10}", "29980000000"),
    ("6.02e+16", "60200000000000000"),
    ("6.02e+23", "602000000000000000000000"),
    ("150000000000000000000000", "1.5\\times 10^{23}"),
    ("1.5\\times 10^{30}", "1500000000000000000000000000000"),
])
def test_a_decimal_times_a_power_of_ten_is_the_number_it_names(ref, right):
    assert equivalent(ref, right) and equivalent(right, ref)
    assert is_correct(f"<think>t</think> \\boxed{{{right}}}", ref)[1]
    wrong = right[:-1] + "1" if right[-1] == "0" else right.replace("10^", "11^")
    assert not equivalent(ref, wrong), wrong  # the last digit or the base off: still wrong


def test_a_decimal_times_a_power_of_ten_keeps_its_digits():
    assert not equivalent("6.02\\times 10^{10}", "6.03\\times 10^{10}")
    assert not equivalent("6.02\\times 10^{23}", "6.022\\times 10^{23}")
    assert not equivalent("6.02\\times 10^{10}", "60200000001")
    assert equivalent("6.0215\\times 10^{3}", "6021.5") and equivalent("6.626\\times 10^{-34}", "6.626e-34")
