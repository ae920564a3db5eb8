"""Probe: a program's stdin/stdout cases all ran to their limits even after one had failed, although
the code reward is all-or-nothing: a program that loops cost every case its wall-clock limit (20
cases on 4 workers: 25 s of judging for one sample, 5 s would do), so a policy's hanging programs
multiplied a GRPO step's judging by the number of cases. Once a case of a program fails (a limit, an
error, or output that differs), its other cases are no longer started and those running are stopped."""
from r1mega.rl.rewards import code_reward, run_programs
from r1mega.sandbox.isolation import Job, Limits, run_many

CASES = [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(8)]
LIMITS = Limits(wall_seconds=3.0, cpu_seconds=2)


def _program(code: str) -> str:
    return f"<think>t</think>\n```python\n{code}\n```"


def test_after_one_case_fails_the_others_do_not_run_to_their_limits():
    jobs = [Job("import time\nwhile True:\n    time.sleep(1)\n", stdin=c["input"], limits=LIMITS) for c in CASES]
    results = run_many(jobs, workers=2, groups=[("loop",)] * len(jobs))
    assert not any(r.ok for r in results)
    ran_out = [r for r in results if r.reason.startswith(("wall-clock", "CPU"))]
    assert len(ran_out) <= 2, [r.reason for r in results]  # the two that started together, at most
    assert all(r.reason.startswith(("wall-clock", "CPU", "not run")) for r in results), [r.reason for r in results]


def test_a_wrong_output_stops_the_rest_too():
    wrong_then_slow = "import time\nn = int(input())\nprint(-1 if n == 0 else 2 * n)\ntime.sleep(0 if n == 0 else 60)\n"
    jobs = [Job(wrong_then_slow, stdin=c["input"], limits=LIMITS) for c in CASES]
    expected = [c["output"] for c in CASES]
    results = run_many(jobs, workers=2, groups=[("p",)] * len(jobs),
                       passed=lambda i, r: r.ok and r.stdout.split() == expected[i].split())
    assert results[0].ok and results[0].stdout.split() == ["-1"]
    assert all(r.reason.startswith("not run") for r in results[2:]), [r.reason for r in results]


def test_groups_are_apart_and_rewards_are_unchanged():
    good, loop = _program("print(2 * int(input()))"), _program("while True:\n    pass")
    sample = {"tests": CASES}
    programs = run_programs([good, loop], [sample, sample])
    assert code_reward(good, sample, programs) == 1.0 and code_reward(loop, sample, programs) == 0.0
    assert sum(r.reason.startswith("not run") for r in programs.values()) >= len(CASES) // 2  # the loop's
    assert all(r.ok for k, r in programs.items() if k[1].startswith("print"))  # the good program ran every case
    assert code_reward(good, sample) == 1.0 and code_reward(loop, sample) == 0.0  # without run_programs too
