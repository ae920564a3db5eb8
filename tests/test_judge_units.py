"""Units written on both sides must agree (r1mega/judge/units.py): math-verify drops units, so
5 \\text{ km} scored 1 against 5 \\text{ cm}, 5 cm^2 against 5 cm and 5 hours against 5 minutes."""
import pytest

from r1mega.judge import equivalent
from r1mega.rl.rewards import accuracy_reward


@pytest.mark.parametrize("reference, answer", [
    ("5 \\text{ cm}", "5 \\text{ km}"), ("5\\,\\mathrm{cm}", "5 \\text{ m}"), ("5 \\text{ cm}^2", "5 \\text{ cm}"),
    ("5 \\text{ hours}", "5 \\text{ minutes}"), ("5 cm", "5 km"), ("5 \\text{ apples}", "5 \\text{ pears}"),
    ("12 \\text{ feet}", "12 \\text{ inches}"),
])
def test_different_units_are_different_answers(reference, answer):
    assert not equivalent(reference, answer)
    assert accuracy_reward("<think>t</think> \\boxed{" + answer + "}", {"answer": reference}) == 0.0


@pytest.mark.parametrize("reference, answer", [
    ("5 \\text{ cm}", "5 \\text{ centimeters}"), ("5 \\text{ cm}", "5"), ("5", "5 \\text{ cm}"),
    ("5 \\text{ hours}", "5 \\text{ hrs}"), ("5 \\text{ apples}", "5 \\text{ apple}"), ("12 \\text{ feet}", "12 \\text{ ft}"),
    ("5 \\text{cm}^2", "5\\,\\mathrm{cm}^{2}"), ("5 \\text{ m}", "5 \\text{ metres}"), ("90^\\circ", "90 \\text{ degrees}"),
    ("2x", "2x"),
])
def test_one_unit_in_its_spellings_or_on_one_side_only_is_the_same(reference, answer):
    assert equivalent(reference, answer)
