"""Several multi-rank cases in one spawn of N ranks.

Spawning ranks costs seconds per rank (each re-imports torch and r1mega), often more than the case
it runs. Cases of one world size run one after another in the same ranks and come back by name, so
a parametrized test keeps its own assertions on its own case. A case that raises stops the spawn
with its name in the traceback.
"""
from __future__ import annotations

from typing import Any, Callable

from r1mega.parallel.spawn import run_ranks


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
