"""Probe: tests that pass the program an object of a class of their own (LeetCode's ListNode
shape) were rerun in the program's own interpreter, where a wrong program forged a pass by
patching the harness (`builtins.exec = lambda *a: None` scored code reward 1.0 for `return 0`).
Such tests cannot be judged apart from the program, so they now fail by name for every program:
no reward can be forged there (a correct program scores 0 too, and the reason says why)."""
import pytest

from r1mega.rl.rewards import code_reward
from r1mega.sandbox.isolation import IN_PROCESS_ONLY, isolation_problem, judge

pytestmark = pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}")

TESTS = "class R:\n    def __init__(s, w, h):\n        s.w, s.h = w, h\nassert area(R(2, 3)) == 6\n"
FORGED = "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef area(r):\n    return 0\n"
CORRECT = "def area(r):\n    return r.w * r.h\n"


def test_a_forged_harness_scores_nothing_where_the_tests_pass_their_own_objects():
    assert code_reward(f"<think>t</think>\n```python\n{FORGED}```", {"tests": TESTS}) == 0.0
    res = judge(FORGED, TESTS)
    assert not res.ok and res.reason == IN_PROCESS_ONLY


def test_such_tests_are_named_unusable_for_every_program():
    res = judge(CORRECT, TESTS)
    assert not res.ok and res.reason == IN_PROCESS_ONLY
    assert judge(CORRECT, "assert area_of(2, 3) == 6\n").reason != IN_PROCESS_ONLY  # plain tests judge as before
