"""Run a function on N local ranks with a gloo process group (tests, CPU demos).

Results come back through files (each rank's return value, torch.save'd), so a failing rank's
traceback is reported by torch.multiprocessing and nothing hangs on a pipe.
"""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, env: dict, group: bool, world: int, port: int, outdir: str, fn: Callable,
           args: tuple) -> None:
    os.environ.clear()  # the caller's environment at the call (a forkserver's child has the server's)
    os.environ.update(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # N ranks share few cores
    if not group:  # fn joins (and leaves) the process group itself, from the environment, as under torchrun
        torch.save(fn(rank, world, *args), os.path.join(outdir, f"rank{rank}.pt"))
        return
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world: int, *args: Any, group: bool = True, start_method: str = "spawn") -> list[Any]:
    """fn(rank, world, *args) on `world` new processes in a gloo group (group=False: none, fn starts
    it from the environment); returns their results by rank (tensors, numbers, strings and
    containers of them). start_method "forkserver" forks ranks from a server that imported the
    modules of multiprocessing.set_forkserver_preload once (the tests' fast start)."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(_entry, args=(dict(os.environ), group, world, free_port(), outdir, fn, args),
                           nprocs=world, join=True, start_method=start_method)
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=True) for r in range(world)]
