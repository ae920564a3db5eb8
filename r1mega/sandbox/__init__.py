"""Running untrusted programs: kernel isolation (isolation.py, sandbox_init.py, seccomp.py) and the
judging of their results against tests (code_tests.py). Used by the code reward, `r1mega eval` and
the rejection filters alike."""
