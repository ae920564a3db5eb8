"""Probe: a program that writes to stderr without pause (past its 64 KiB cap, which is read and
dropped, not a kill like stdout's) woke the trainer for every pipeful: 1.6-1.9 s of the trainer's
CPU, under its GIL, per 3 s of the program's wall time (a 1-byte write loop as much). The trainer
now reads a job's output at most every few milliseconds once it has read it 64 times."""
import time

import pytest

from r1mega.sandbox.isolation import Limits, isolation_problem, run_code

pytestmark = pytest.mark.skipif(isolation_problem() is not None, reason=f"no isolated sandbox: {isolation_problem()}")

FLOODS = {
    "64 KiB writes": "import os\nb = b'x' * 65536\nwhile True:\n    os.write(2, b)\n",
    "1-byte writes": "import os\nwhile True:\n    os.write(2, b'x')\n",
}


@pytest.mark.parametrize("name", sorted(FLOODS))
def test_a_stderr_flood_costs_the_trainer_little_cpu(name):
    run_code("print(1)")  # the zygote's start-up is not the flood's
    cpu = time.process_time()
    res = run_code(FLOODS[name], limits=Limits(wall_seconds=3))
    cpu = time.process_time() - cpu
    assert res.reason == "wall-clock timeout after 3 s" and len(res.stderr) == Limits().stderr_bytes
    assert cpu < 0.4, f"the trainer spent {cpu:.2f} s of CPU reading 3 s of {name}"


def test_programs_with_much_output_still_pass_whole():
    noisy = ("import sys\nfor i in range(50000):\n    sys.stderr.write('debug line %d\\n' % i)\n"
             "for i in range(90000):\n    print(i)\n")
    t0 = time.monotonic()
    res = run_code(noisy, limits=Limits(wall_seconds=20, cpu_seconds=15))
    assert res.ok, res.reason
    assert res.stdout == "".join(f"{i}\n" for i in range(90000)) and len(res.stderr) == Limits().stderr_bytes
    assert time.monotonic() - t0 < 10
