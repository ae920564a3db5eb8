"""Time the answer judge on responses built to stall it (issue 22), beside the judge of another
commit when asked (its rl/rewards.py, eval/benchmark.py and generation/filters.py, loaded from git).

    python bench/judge_dos.py [--before COMMIT] [--tags 10000 20000]

Per shape and size: seconds for the RL rewards (accuracy, format, language, code extraction),
`r1mega eval`'s judge and the rejection filter on one response. Timings are wall clock on a shared
machine: read the ratios, not the digits; a call over --budget seconds is stopped and shown as >budget.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time


def shapes(n: int) -> dict[str, str]:
    return {
        "unclosed <think>": "<think>" * n,
        "unclosed <answer>": "<think>x</think>" + "<answer>" * n,
        "unclosed \\boxed{": "<think>x</think>" + "\\boxed{" * n,
        "<think></think> pairs": "<think>a</think>" * n + " 4",
        "unclosed ``` fences": "<think>x</think>" + "```python\n" * n,
    }


def current():
    from r1mega.eval.benchmark import judge
    from r1mega.generation.filters import FilterConfig, judge_sample
    from r1mega.judge import final_code
    from r1mega.rl.rewards import accuracy_reward, format_reward, language_reward

    rec = {"id": "p", "answer": "4"}
    return {"rewards": lambda t: (accuracy_reward(t, rec), format_reward(t, rec), language_reward(t, rec),
                                  final_code(t)),
            "eval": lambda t: judge(rec, t),
            "filter": lambda t: judge_sample(rec, {"completion": t, "finish_reason": "eos"},
                                             FilterConfig(require_format=False))}


def old(commit: str):
    """The judge of `commit`, its three modules loaded under other names (imports of r1mega resolve here)."""
    tmp = tempfile.mkdtemp(prefix="judge-old-")
    mods = {}
    for name, path in [("rewards", "r1mega/rl/rewards.py"), ("benchmark", "r1mega/eval/benchmark.py"),
                       ("filters", "r1mega/generation/filters.py")]:
        src = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
        src = src.replace("from r1mega.rl.rewards import", "from old_rewards import")
        src = src.replace("from r1mega.eval.benchmark import", "from old_benchmark import")
        file = os.path.join(tmp, f"old_{name}.py")
        with open(file, "w") as f:
            f.write(src)
    sys.path.insert(0, tmp)
    for name in ("rewards", "benchmark", "filters"):
        spec = importlib.util.spec_from_file_location(f"old_{name}", os.path.join(tmp, f"old_{name}.py"))
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = mods[name]
        spec.loader.exec_module(mods[name])
    r, b, f = mods["rewards"], mods["benchmark"], mods["filters"]
    rec = {"id": "p", "answer": "4"}
    return {"rewards": lambda t: (r.accuracy_reward(t, rec), r.format_reward(t, rec), r.language_reward(t, rec),
                                  r.CODE_BLOCK.findall(r.outside_thought(t))),
            "eval": lambda t: b.judge(rec, t),
            "filter": lambda t: f.judge_sample(rec, {"completion": t, "finish_reason": "eos"},
                                               f.FilterConfig(require_format=False))}


class OverBudget(Exception):
    pass


def seconds(fn, text: str, budget: int) -> float:
    """Wall seconds of fn(text); inf when it runs past `budget` seconds (stopped by an alarm)."""
    def stop(*_):
        raise OverBudget

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(budget)
    t0 = time.perf_counter()
    try:
        fn(text)
        return time.perf_counter() - t0
    except OverBudget:
        return float("inf")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=None, help="also time the judge of this commit")
    p.add_argument("--tags", type=int, nargs="+", default=[10000, 20000])
    p.add_argument("--budget", type=int, default=30, help="seconds per call before it is stopped (shown as inf)")
    args = p.parse_args()
    judges = {"now": current()}
    if args.before:
        judges[args.before[:7]] = old(args.before)
    print(f"{'shape':24} {'n':>6} {'chars':>8} " + " ".join(f"{w + ':' + k:>16}" for w in judges for k in judges[w]), flush=True)
    for n in args.tags:
        for name, text in shapes(n).items():
            cells = [seconds(fn, text, args.budget) for w in judges for fn in judges[w].values()]
            print(f"{name:24} {n:>6} {len(text):>8} " + " ".join(
                f"{c:>15.3f}s" if c != float("inf") else f"{'>' + str(args.budget):>15}s" for c in cells), flush=True)


if __name__ == "__main__":
    main()
