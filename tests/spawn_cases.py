"""Multi-rank test runs: ranks forked from one prepared server, and several cases in one run.

r1mega.parallel.spawn.run_ranks spawns each rank as a new interpreter, which spends seconds importing
torch and r1mega before its case starts, often longer than the case. run_ranks here has the same
contract (fn(rank, world, *args) on `world` processes with a gloo group; results by rank) but forks
the ranks from a server process that imported torch and r1mega once for the session. Each rank is
still a new process holding only imported modules; it starts with the caller's environment, working
directory and sys.path, as a spawned one does.

run_cases runs cases of one world size one after another in the same ranks and gives each case's
results back by name, so a parametrized test keeps its own assertions on its own case. A case that
raises stops the run with its name in the traceback.
"""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable


from r1mega.parallel import spawn

# imported once by the server; each forked rank starts with them (a missing one is skipped)
PRELOAD = ["torch", "torch.distributed", "r1mega.config", "r1mega.parallel.layout", "r1mega.train.setup",
           "r1mega.train.trainer", "r1mega.train.lm_step", "r1mega.inference.generate", "r1mega.rl.grpo",
           "r1mega.models.family", "r1mega.models.weights", "r1mega.cli", "r1mega.verify_hf",
           # megatron-core's indexed dataset: every rank that reads or builds a tiny corpus imports it
           # (seconds each: megatron.core pulls torch._dynamo in); the server imports it once
           "megatron.core.datasets.indexed_dataset"]


def run_ranks(fn: Callable, world: int, *args: Any, group: bool = True) -> list[Any]:
    """r1mega.parallel.spawn.run_ranks with ranks forked from the prepared server."""
    multiprocessing.set_forkserver_preload(PRELOAD)  # read when the server first starts
    return spawn.run_ranks(fn, world, *args, group=group, start_method="forkserver")


def _cli_rank(rank: int, world: int, argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from r1mega.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = main(list(argv))
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    return status, out.getvalue()


def cli_on_ranks(world: int, *argv: str) -> tuple[int, str]:
    """`r1mega <argv>` on `world` ranks with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT; the command joins and leaves the process group itself, as under torchrun):
    (the worst exit status, the ranks' stdout in rank order)."""
    results = run_ranks(_cli_rank, world, list(argv), group=False)
    return max(status for status, _ in results), "".join(out for _, out in results)


def cases_worker(rank: int, world: int, cases: list[tuple[str, Callable, tuple]]) -> dict[str, Any]:
    out = {}
    for name, fn, args in cases:
        try:
            out[name] = fn(rank, world, *args)
        except BaseException as e:
            raise RuntimeError(f"multi-rank case {name!r} failed on rank {rank} of {world}") from e
    return out


def run_cases(world: int, cases: dict[str, tuple[Callable, tuple]]) -> dict[str, list[Any]]:
    """{name: (fn, args)} -> {name: [fn(rank, world, *args) for each rank]}, all in one spawn."""
    per_rank = run_ranks(cases_worker, world, [(name, fn, tuple(args)) for name, (fn, args) in cases.items()])
    return {name: [r[name] for r in per_rank] for name in cases}


def selected_params(request, test_name: str) -> dict[str, dict]:
    """{node name ("test_x[id]", or "test_x" unparametrized): parameters} of the cases of `test_name`
    (in the module asking) that this session runs: a module fixture spawns exactly the cases
    selected (-k, -m, node ids), no others."""
    return {item.name: getattr(item, "callspec", None) and item.callspec.params or {}
            for item in request.session.items
            if getattr(item, "module", None) is request.module and getattr(item, "originalname", None) == test_name}


def run_selected(request, tests: dict[str, Callable[[dict], tuple[int, Callable, tuple]]]) -> dict[str, list[Any]]:
    """{test name: params -> (world, fn, args)}: every selected case of those tests, one spawn per
    world size. -> {node name: per-rank results}."""
    by_world: dict[int, dict] = {}
    for test, case in tests.items():
        for node, params in selected_params(request, test).items():
            world, fn, args = case(params)
            by_world.setdefault(world, {})[node] = (fn, args)
    out = {}
    for world, cases in sorted(by_world.items()):
        out.update(run_cases(world, cases))
    return out
