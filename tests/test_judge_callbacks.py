"""Probe: tests that pass the program a callable (a lambda, `len`, a bound `list.append`) ran in
the program's own interpreter, where a wrong program forged a pass by patching the harness
(`builtins.exec = lambda *a: None`: code reward 1.0 for `return 0`). The tests' callables now
cross as call-backs: the program gets a stub, each call comes back to the judge, which runs the
callable on plain data; so those tests are judged apart like any other."""
import pytest

from r1mega.rl.rewards import code_reward
from r1mega.sandbox.isolation import Job, isolation_problem, run_many

pytestmark = pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}")

TESTS = "assert apply_twice(lambda x: x + 1, 3) == 5\nassert apply_twice(lambda x: x * 2, 3) == 12\n"
FORGERIES = {
    "patched exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef apply_twice(f, x):\n    return 0\n",
    "patched compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 't', 'exec')\n"
                       "def apply_twice(f, x):\n    return 0\n",
    "token from the harness's frame": (
        "import os, sys\nframe = sys._getframe()\n"
        "while frame is not None and 'token_fd' not in frame.f_locals:\n    frame = frame.f_back\n"
        "if frame is not None:\n"
        "    os.write(1, b'\\n' + os.pread(frame.f_locals['token_fd'], 256, 0) + b'\\n')\n    os._exit(0)\n"
        "def apply_twice(f, x):\n    return 0\n"),
}


def _response(code: str) -> str:
    return f"<think>t</think>\n```python\n{code}```"


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_wrong_program_cannot_forge_tests_that_pass_a_lambda(name):
    assert code_reward(_response(FORGERIES[name]), {"tests": TESTS}) == 0.0
    assert code_reward(_response("def apply_twice(f, x):\n    return f(f(x))\n"), {"tests": TESTS}) == 1.0


CASES = [  # (program, tests, entry point, passes)
    ("def pick(xs, key):\n    return max(xs, key=key)\n",
     "assert pick(['a', 'ccc', 'bb'], len) == 'ccc'\nassert pick([3, -5, 1], key=abs) == -5\n", None, True),
    ("def g(x):\n    return x * 10\ndef h(f, x):\n    return f(x) + 1\n",
     "assert h(lambda y: g(y) + g(1), 2) == 31\n", None, True),  # the tests' lambda calls the program back
    ("def safe(f, x):\n    try:\n        return f(x)\n    except ZeroDivisionError:\n        return 'inf'\n",
     "assert safe(lambda x: 1 // x, 0) == 'inf'\nassert safe(lambda x: 1 // x, 1) == 1\n", None, True),
    ("def apply_all(fs, x):\n    return [f(x) for f in fs]\n",
     "def check(candidate):\n    assert candidate([lambda v: v + 1, lambda v: v * 2, str], 3) == [4, 6, '3']\n",
     "apply_all", True),
    ("def each(xs, f):\n    for x in xs:\n        f(x)\n",
     "seen = []\neach([1, 2, 3], seen.append)\nassert seen == [1, 2, 3]\n", None, True),
    ("def each(xs, f):\n    for x in xs[:2]:\n        f(x)\n",
     "seen = []\neach([1, 2, 3], seen.append)\nassert seen == [1, 2, 3]\n", None, False),
    ("def ident(f):\n    return f\n", "f = lambda: 1\nassert ident(f) is f\n", None, False),  # no callable comes back
    ("def compose(f, g):\n    return lambda x: f(g(x))\n", "assert compose(abs, abs)(-1) == 1\n", None, False),
]


def test_the_tests_callables_are_called_back_in_the_judge():
    results = run_many([Job(code, tests=tests, entry_point=ep, judged=True) for code, tests, ep, _ in CASES])
    assert [r.ok for r in results] == [want for *_, want in CASES], [r.reason for r in results]


def test_powerful_callables_are_never_handed_to_the_program():
    """The call-backs run in the judge, which sees the host's files: eval, open, getattr and the
    like (or os.*) are refused even where the tests pass them; len, str, sorted, math.sqrt cross."""
    code = "def call(f, *a):\n    return f(*a)\n"
    refused = ["assert call(eval, '1+1') == 2", "assert call(open, '/etc/hostname') is not None",
               "assert call(getattr, 1, 'real') == 1", "import os\nassert call(os.listdir, '/')",
               "assert call(__import__, 'os') is not None"]
    allowed = ["assert call(len, 'ab') == 2", "assert call(str, 3) == '3'", "import math\nassert call(math.sqrt, 4) == 2",
               "assert call(sorted, [2, 1]) == [1, 2]"]
    results = run_many([Job(code, tests=t, judged=True) for t in refused + allowed])
    assert [r.ok for r in results] == [False] * len(refused) + [True] * len(allowed), [r.reason for r in results]
    assert all("is not handed to the program" in r.reason for r in results[:len(refused)])
