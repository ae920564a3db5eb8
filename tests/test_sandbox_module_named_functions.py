"""Probe (a false negative): a program's function named like a stdlib module (`def heapq`,
`def array`, `def string` ...) that the tests call without importing anything was taken for that
module, imported fresh in the judge: every program, a correct one too, failed with `tests
unusable`. A stdlib name the tests only use as `name.attr` is a module they forgot to import;
one they call or pass on is the program's."""
import pytest

from r1mega.sandbox.code_tests import plan
from r1mega.sandbox.isolation import isolation_problem, judge

CASES = [  # (program, tests, passes)
    ("def heapq(xs):\n    return sorted(xs)\n", "assert heapq([2, 1, 3]) == [1, 2, 3]\n", True),
    ("def heapq(xs):\n    return xs\n", "assert heapq([2, 1, 3]) == [1, 2, 3]\n", False),
    ("def array(xs):\n    return sum(xs)\n", "assert array([1, 2]) == 3\nassert array([]) == 0\n", True),
    ("def root(x):\n    return x ** 0.5\n", "assert math.isclose(root(2), math.sqrt(2))\n", True),  # math: not imported
]


def test_plan_tells_a_called_name_from_a_module():
    p = plan("assert heapq([2, 1]) == [1, 2]\nassert math.floor(string(1.5)) == 1\n")
    assert p.proxies == ["heapq", "string"] and p.modules == ["math"]


@pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}")
@pytest.mark.parametrize("program,tests,passes", CASES)
def test_functions_named_like_modules_are_judged(program, tests, passes):
    res = judge(program, tests)
    assert res.ok is passes, res.reason
