"""Code-reward sandbox throughput, measured side by side in one run.

    python bench/sandbox_throughput.py [--programs 512 --workers N --repeat 3]

Times, for a GRPO step's worth of programs (default 512: 32 prompts x 16 samples), each a small
solved problem with its assert tests:
  bare     `python -I -S -c` per program, no isolation (the floor: interpreter start-up)
  sandbox  r1mega.sandbox.isolation.run_many (namespaces, fresh root, seccomp, limits, token check)
  judged   the same, judged apart: the asserts run in a judge interpreter (forked from the zygote,
           never holding the program's code) that calls `lis` in the program's sandbox over plain
           data (r1mega/sandbox/code_tests.py): two processes per program, as the code reward runs
both through the same thread pool, and the per-program latency of one program at a time. Best of
--repeat runs; the ratio sandbox/bare is the isolation's cost.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1mega.sandbox.isolation import Job, default_workers, require_isolation, run_many  # noqa: E402

CODE = "from bisect import bisect_left\ndef lis(a):\n    t = []\n    for x in a:\n        i = bisect_left(t, x)\n" \
       "        t[i:i + 1] = [x]\n    return len(t)\n"
TESTS = "assert lis([10, 9, 2, 5, 3, 7, 101, 18]) == {}"


def bare(i: int) -> bool:
    p = subprocess.run([sys.executable, "-I", "-S", "-c", CODE + "\n" + TESTS.format(4 if i >= 0 else 0)],
                       capture_output=True, timeout=30)
    return p.returncode == 0


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=512)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    require_isolation()
    n, w = args.programs, args.workers
    jobs = [Job(CODE, tests=TESTS.format(4)) for _ in range(n)]

    judged_jobs = [Job(CODE, tests=TESTS.format(4), judged=True) for _ in range(n)]

    def sandboxed():
        assert all(r.ok for r in run_many(jobs, workers=w))

    def judged():
        assert all(r.ok for r in run_many(judged_jobs, workers=w))

    def plain():
        with ThreadPoolExecutor(w) as pool:
            assert all(pool.map(bare, range(n)))

    one_s = best(lambda: run_many(jobs[:1], workers=1), max(args.repeat, 5))
    one_b = best(lambda: bare(0), max(args.repeat, 5))
    one_j = best(lambda: judged_jobs and run_many(judged_jobs[:1], workers=1), max(args.repeat, 5))
    t_b, t_s, t_j = best(plain, args.repeat), best(sandboxed, args.repeat), best(judged, args.repeat)
    print(f"{n} programs, {w} workers, {os.cpu_count()} CPUs (best of {args.repeat})")
    print(f"{'':10}{'batch s':>10}{'programs/s':>12}{'one program ms':>16}")
    print(f"{'bare':10}{t_b:10.2f}{n / t_b:12.1f}{one_b * 1e3:16.1f}")
    print(f"{'sandbox':10}{t_s:10.2f}{n / t_s:12.1f}{one_s * 1e3:16.1f}")
    print(f"{'judged':10}{t_j:10.2f}{n / t_j:12.1f}{one_j * 1e3:16.1f}")
    print(f"sandbox/bare: batch {t_s / t_b:.2f}x, one program {one_s / one_b:.2f}x; "
          f"isolation overhead per program {(one_s - one_b) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
