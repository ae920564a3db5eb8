"""Probe (a false negative): the sandbox's root had no /dev/shm, where glibc keeps POSIX named
semaphores, so every multiprocessing lock failed (`multiprocessing.Pool(3)`, `Queue()`, `Lock()`:
FileNotFoundError) and a correct program using them scored 0. /dev/shm now leads to the
program's /tmp (its size cap counts them)."""
import pytest

from r1mega.sandbox.isolation import Limits, isolation_problem, run_code

pytestmark = pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}")

PROGRAM = """
import multiprocessing as mp
with mp.Pool(3) as pool:
    print(sum(pool.map(abs, range(-10, 10))))
q = mp.Queue()
q.put([1, 2])
print(q.get())
with mp.Lock():
    print("locked")
"""


def test_multiprocessing_pools_queues_and_locks_run():
    res = run_code(PROGRAM, limits=Limits(wall_seconds=20, cpu_seconds=10, processes=8))
    assert res.ok and res.stdout == "100\n[1, 2]\nlocked\n", res.reason + res.stderr[-800:]


def test_semaphores_count_against_the_tmp_cap():
    fill = ("import multiprocessing as mp\nlocks = []\ntry:\n    while True:\n        locks.append(mp.Semaphore())\n"
            "except OSError as e:\n    print(len(locks), e.errno)\n")
    res = run_code(fill, limits=Limits(wall_seconds=20, cpu_seconds=10, disk_bytes=1 << 20))
    assert res.ok, res.reason + res.stderr[-800:]
    made, errno = map(int, res.stdout.split())
    assert 0 < made <= (1 << 20) // 4096 and errno in (24, 28), res.stdout  # a page each of /tmp: ENOSPC (or EMFILE)
