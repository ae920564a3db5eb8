"""Probe: the CPU was shared per task. Where the trainer runs in a CPU cgroup of its own (any
container; the kernel's per-session autogroups apply only in the root cgroup), a program keeping
20 processes busy (within its 40 tasks) took ~20/21 of the trainer's CPU until its wall limit:
0.3 s of the trainer's own work took 5.2 s beside it. Each zygote (one program at a time) now
has a CPU cgroup of its own where one can be made, so a program weighs like one task."""
import os
import subprocess
import sys

import pytest

from r1mega.sandbox.isolation import isolation_problem
from r1mega.sandbox.sandbox_init import find_cgroup

CPU = find_cgroup("cpu") if os.geteuid() == 0 else None
pytestmark = [pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}"),
              pytest.mark.skipif(CPU is None or CPU[1] != 1, reason="needs root and cgroup v1's cpu hierarchy")]

SCRIPT = """
import os, subprocess, sys, threading, time
parent = sys.argv[1]
box = f"{parent}/r1mega-test-container-{os.getpid()}"  # the trainer's container, as it were
os.mkdir(box)
with open(f"{box}/cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
try:
    from r1mega.sandbox.isolation import Limits, _stop_zygotes, run_code
    HOG = "import os, time\\nfor _ in range(19):\\n    if os.fork() == 0:\\n        break\\nwhile True:\\n    pass\\n"
    WORK = "import time\\nw = time.monotonic()\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3:\\n    pass\\nprint(time.monotonic() - w)"
    hog = threading.Thread(target=run_code, args=(HOG,), kwargs={"limits": Limits(wall_seconds=6, cpu_seconds=8)})
    hog.start()
    time.sleep(1.5)
    took = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True).stdout.strip()
    hog.join()
    _stop_zygotes()
    print(took)
finally:
    with open(f"{parent}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(0.2)
    os.rmdir(box)
"""


def test_a_program_with_many_busy_processes_does_not_starve_the_trainer():
    parent = CPU[0]  # this process's own CPU cgroup
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SCRIPT, parent], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-1500:]
    took = float(out.stdout.split()[-1])
    assert took < 2.5, f"0.3 s of the trainer's CPU work took {took:.1f} s beside the program"
