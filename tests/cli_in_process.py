"""A command's main() run in the test's own process: what `python -m <module> ARGS` gives (exit status,
stdout, stderr as text) without starting an interpreter that imports torch, r1mega and megatron-core
again (seconds per command on a 2-core machine, often longer than what the test checks).

For tests of what a command checks, refuses and writes. Each command keeps tests that start it as a
user does (test_generate_eval.py: generate/eval/reject-sample under torchrun; test_reliability.py and
test_training.py: pretrain; test_grpo.py: grpo; test_convert.py and test_ckpt_convert_disk_full.py:
r1mega-convert; test_pipeline.py, test_cli_probes.py: pipeline; test_demo.py: demo)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
from typing import Callable, Optional


def run_main(main: Callable, args, cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """main(args) with stdout/stderr captured and the working directory `cwd`, its exit status as the
    interpreter makes it (`sys.exit(main())`: None is 0, a SystemExit message is printed and 1).
    R1MEGA_DEBUG is unset and torch runs one intra-op thread meanwhile, as in the tests' subprocesses
    (OMP_NUM_THREADS=1: the same floats whatever the caller's thread count); an exception main lets out
    propagates (a subprocess would print a traceback)."""
    import torch

    out, err = io.StringIO(), io.StringIO()
    debug = os.environ.pop("R1MEGA_DEBUG", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code
                if code is not None and not isinstance(code, int):
                    print(code, file=err)
                    code = 1
        code = 0 if code is None else code
    finally:
        torch.set_num_threads(threads)
        if debug is not None:
            os.environ["R1MEGA_DEBUG"] = debug
    return subprocess.CompletedProcess([str(a) for a in args], code, out.getvalue(), err.getvalue())
