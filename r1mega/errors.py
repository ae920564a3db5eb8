"""The errors a user can fix, and the one way every command reports them.

Each names what is wrong, where (config key, file:line, tensor) and, where it helps, how to fix
it. Commands print them as one `error: ...` line and exit 2; a traceback is shown only with
`--debug` or R1MEGA_DEBUG=1. Anything else is a bug and keeps its traceback.
They subclass ValueError so code that caught ValueError before still does.
"""
from __future__ import annotations

import os
import sys
from typing import Callable


class R1MegaError(ValueError):
    """Base of the errors a user can fix."""


class ConfigError(R1MegaError):
    """A configuration problem, naming the offending key."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"config error at '{key}': {message}")


class DataError(R1MegaError):
    """Malformed or inconsistent data, naming the file and line (or offset)."""


class CheckpointError(R1MegaError):
    """A checkpoint that cannot be read, does not match the model, or would be overwritten."""


class OutputError(R1MegaError):
    """An output directory a command may not write into: another's files, in use, not writable."""


class TrainingError(R1MegaError):
    """A run that cannot go on (e.g. every step non-finite)."""


EXIT_USER_ERROR = 2


def debug_requested(argv=None) -> bool:
    return os.environ.get("R1MEGA_DEBUG", "") not in ("", "0") or "--debug" in (argv or [])


def run_command(fn: Callable[[], int], debug: bool = False) -> int:
    """Run a command body; a user-fixable error becomes `error: ...` on stderr and exit status 2.

    Under torchrun each rank reports for itself (ranks > 0 prefixed) and exits at once, so no rank
    waits in a collective for one that has left; torchrun then stops the rest."""
    try:
        return fn()
    except R1MegaError as e:
        if debug or debug_requested():
            raise
        rank = int(os.environ.get("RANK", "0"))
        prefix = f"[rank {rank}] " if rank else ""
        print(f"{prefix}error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
