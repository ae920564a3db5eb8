"""Hostile probes of the judged code sandbox that once forged a pass (each was 1.0 before its fix).

Wrong programs must score 0 and their correct twins 1, through the trainer's path (judge /
code_reward). See README "Code-reward sandbox" for the layer that stops each.
"""
import os
import subprocess
import sys

import pytest

from r1mega.sandbox import isolation as sandbox

pytestmark = pytest.mark.skipif(sandbox.isolation_problem() is not None,
                                reason=f"no isolated sandbox here: {sandbox.isolation_problem()}")

ALWAYS_EQUAL = "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\n"

# (name, wrong program, its correct twin, tests, entry point)
FORGERIES = [
    # a program's StopIteration ended the tests' map() early: all(...) of nothing is True
    ("stop_iteration_in_map", "def f(x):\n    raise StopIteration\n", "def f(x):\n    return x + 1\n",
     "assert all(map(lambda c: f(c[0]) == c[1], [(1, 2), (2, 3)]))", None),
    ("stop_iteration_in_zip_loop", "def f(x):\n    raise StopIteration\n", "def f(x):\n    return x + 1\n",
     "for x, y in zip([1, 2], map(f, [1, 2])):\n    assert y == x + 1\n", None),
    ("stop_async_iteration", "def f(x):\n    raise StopAsyncIteration\n", "def f(x):\n    return x + 1\n",
     "assert all(map(lambda c: f(c[0]) == c[1], [(1, 2), (2, 3)]))", None),
    # an exception class whose metaclass lies about its __mro__ (reaches the tests as StopIteration)
    ("lying_mro", "class M(type):\n    @property\n    def __mro__(cls):\n        return (StopIteration,)\n"
     "class E(Exception, metaclass=M):\n    pass\ndef f(x):\n    raise E()\n", "def f(x):\n    return x + 1\n",
     "assert all(map(lambda c: f(c[0]) == c[1], [(1, 2), (2, 3)]))", None),
    # a returned value nested to the cap, wrapped by the tests, forced the in-process fallback
    ("fallback_forced_by_depth",
     "def parse(s):\n    v = 0\n    for _ in range(100):\n        v = [v]\n    return v\n" + ALWAYS_EQUAL
     + "def total(xs):\n    return A()\n",
     "def parse(s):\n    return int(s)\ndef total(xs):\n    return sum(xs)\n",
     "assert total([parse(s) for s in ['1', '2']]) == 3", None),
    # a returned dict whose .values() the tests pass on forced the fallback
    ("fallback_forced_by_dict_values", "def parse(s):\n    return {'a': 1}\n" + ALWAYS_EQUAL
     + "def total(xs):\n    return A()\n",
     "def parse(s):\n    return {'a': 1, 'b': 2}\ndef total(xs):\n    return sum(xs)\n",
     "assert total(parse('x').values()) == 3", None),
    # an entry point named like a builtin made the tests' own len() the program's
    ("entry_point_shadows_builtin", "def len(x):\n    return 99\n",
     "def len(x):\n    n = 0\n    for _ in x:\n        n += 1\n    return n\n",
     "def check(candidate):\n    assert candidate('abc') == len('abc')\n    assert candidate([]) == len([])\n", "len"),
    # tests holding a reference solution under the entry point's name tested themselves
    ("entry_point_bound_by_the_tests", "def f(x):\n    return 0\n", "def f(x):\n    return x + 1\n",
     "def f(x):\n    return x + 1\ndef check(candidate):\n    for i in range(3):\n        assert candidate(i) == f(i)\n", "f"),
]


@pytest.mark.parametrize("name, wrong, right, tests, entry", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forgery_scores_zero(name, wrong, right, tests, entry):
    bad = sandbox.judge(wrong, tests, entry)
    assert not bad.ok, (name, bad)
    good = sandbox.judge(right, tests, entry)
    assert good.ok, (name, good)


def test_tests_own_callables_still_run_and_their_objects_fail_by_name():
    """Tests that pass the program a lambda or `len` are judged apart (call-backs into the judge);
    ones that pass their own object cannot be, and fail by name (tests/test_judge_own_objects.py)."""
    code = "def apply(g, x):\n    return g(x)\ndef area(p):\n    return p.w * p.h\n"
    tests = "assert apply(lambda v: v * 2, 3) == 6\nassert apply(len, 'ab') == 2\n"
    assert sandbox.judge(code, tests).ok
    assert not sandbox.judge(code.replace("g(x)", "g(x) + 1"), tests).ok
    res = sandbox.judge(code, "class P:\n    w, h = 2, 3\nassert area(P()) == 6\n")
    assert not res.ok and res.reason == sandbox.IN_PROCESS_ONLY


def test_check_parameter_named_like_the_entry_point():
    """`def check(f)` with entry point f: check gets the program's f (it was a NameError, a false negative)."""
    tests = "def check(f):\n    assert f(1) == 2\n"
    assert sandbox.judge("def f(x):\n    return x + 1\n", tests, "f").ok
    assert not sandbox.judge("def f(x):\n    return x\n", tests, "f").ok


def test_builtin_named_entry_point_in_the_fallback():
    """Tests that pass a lambda run in the program's interpreter: check() runs once, on the
    program's map, while the tests' own map() stays the builtin."""
    tests = "def check(candidate):\n    assert candidate(lambda v: v + 1, [1]) == [2]\n    assert list(map(str, [1])) == ['1']\n"
    assert sandbox.judge("def map(g, xs):\n    return [g(x) for x in xs]\n", tests, "map").ok
    assert not sandbox.judge("def map(g, xs):\n    return [g(x) + 1 for x in xs]\n", tests, "map").ok


def test_builtin_named_entry_point_through_code_reward():
    from r1mega.rl.rewards import code_reward

    sample = {"tests": "def check(candidate):\n    assert candidate([3, 1, 2]) == max([3, 1, 2])\n", "entry_point": "max"}
    wrong = "<think>x</think>\n```python\ndef max(xs):\n    return -1\n```"
    right = "<think>x</think>\n```python\ndef max(xs):\n    best = xs[0]\n    for v in xs:\n        best = v if v > best else best\n    return best\n```"
    assert code_reward(wrong, sample) == 0.0
    assert code_reward(right, sample) == 1.0


PLAIN_USER = """
import sys
from r1mega.sandbox import isolation as sandbox
from tests.test_sandbox_probes import FORGERIES
assert sandbox.isolation_problem() is None, sandbox.isolation_problem()
print(sum(sandbox.judge(w, t, e).ok for _, w, _, t, e in FORGERIES),
      sum(sandbox.judge(r, t, e).ok for _, _, r, t, e in FORGERIES))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/unshare"), reason="needs root and util-linux unshare")
def test_forgeries_as_a_plain_user():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    p = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c", PLAIN_USER],
                       capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", str(len(FORGERIES))], p.stdout


def test_thread_pool_of_32_workers_fits():
    """ThreadPoolExecutor()'s default on a machine with 28+ CPUs is 32 threads: glibc's per-thread
    malloc arenas (64 MiB of address space each) exhausted the 512 MiB cap after ~12 (a false negative)."""
    code = ("import time\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "def squares(n):\n    def sq(i):\n        time.sleep(0.05)\n        return [i * i] * 100\n"
            "    with ThreadPoolExecutor(32) as pool:\n        return [v[0] for v in pool.map(sq, range(n))]\n")
    r = sandbox.judge(code, "assert squares(64) == [i * i for i in range(64)]")
    assert r.ok, r


def test_eval_and_reject_sample_refuse_the_forgeries():
    """The same wrong programs through `r1mega eval`'s judge and the rejection filter."""
    from r1mega.eval.benchmark import judge as eval_judge
    from r1mega.generation.filters import FilterConfig, judge_sample

    for name, wrong, right, tests, entry in FORGERIES[:1] + FORGERIES[-2:]:
        rec = {"id": name, "prompt": "p", "tests": tests, **({"entry_point": entry} if entry else {})}
        block = lambda c: f"<think>ok</think>\n```python\n{c}```"  # noqa: E731
        assert eval_judge(rec, block(wrong))[1] is False and eval_judge(rec, block(right))[1] is True, name
        sample = {"sample": 0, "completion": block(wrong), "finish_reason": "eos", "completion_tokens": 10}
        assert judge_sample(rec, sample, FilterConfig()) == "tests_failed", name
