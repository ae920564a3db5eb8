"""Probe: Python tests that use no name of the program (only comments, `import math; assert
math.pi > 3`, a `def check(c)` never called) passed every program that loads: code reward 1.0
for `print(0)`. They check nothing of the response, so they are now unusable by name."""
import pytest

from r1mega.rl.rewards import code_reward
from r1mega.sandbox import code_tests
from r1mega.sandbox.isolation import isolation_problem, judge

ANY = "<think>t</think>\n```python\nprint(0)\n```"
VACUOUS = ["# the tests were lost", "import math\nassert math.pi > 3\n", "def check(candidate):\n    assert candidate(1) == 2\n"]


@pytest.mark.parametrize("tests", VACUOUS)
def test_tests_that_use_no_name_of_the_program_are_unusable(tests):
    assert isinstance(code_tests.plan(tests), str)


@pytest.mark.skipif(isolation_problem() is not None, reason="no isolated sandbox")
@pytest.mark.parametrize("tests", VACUOUS)
def test_no_program_scores_on_them(tests):
    assert code_reward(ANY, {"tests": tests}) == 0.0
    assert judge("print(0)\n", tests).reason.startswith("tests unusable: they use no name of the program")


@pytest.mark.skipif(isolation_problem() is not None, reason="no isolated sandbox")
def test_tests_that_call_the_program_still_judge_it():
    good = "<think>t</think>\n```python\ndef f(x):\n    return x + 1\n```"
    assert code_reward(good, {"tests": VACUOUS[2], "entry_point": "f"}) == 1.0
    assert code_reward(ANY, {"tests": VACUOUS[2], "entry_point": "f"}) == 0.0
