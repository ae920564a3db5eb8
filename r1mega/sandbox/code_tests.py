"""How a sample's tests are judged so that the program cannot change what they mean.

The program runs in its sandbox and serves its functions; the tests run in a second interpreter
that never held the program's code (r1mega.sandbox.isolation._judged). There every name the
tests use but neither define, import nor find among the builtins is a proxy for the program's
function of that name: calling it sends the arguments to the program as plain data
(r1mega.sandbox.wire) and returns the program's answer decoded as plain data (an int, a list, a
dict ... never an object of the program's class). The tests' own builtins, modules, operators
and comparisons are the judge's, untouched: a program can pass only by returning values that
pass, whatever the tests' shape (loops, helpers, math.isclose, tolerances, sorted(...), sets).

plan() works out, with `ast`, which names are the program's (proxies) and which are stdlib
modules the tests use without importing them (imported fresh in the judge), and appends
`check(entry_point)` for HumanEval-style tests.
"""
from __future__ import annotations

import ast
import builtins
import functools
import sys
import threading
from dataclasses import dataclass
from typing import Optional, Union

from r1mega.sandbox.wire import MAX_DEPTH, decode, encode  # noqa: F401 - the format, re-exported


@dataclass(frozen=True)
class Plan:
    script: str  # the tests, then check(entry_point) where given
    proxies: list[str]  # the program's names the tests use: answered by the program over plain data
    modules: list[str]  # stdlib modules the tests use without importing them (fresh in the judge)
    imported: list[str]  # top-level modules the tests import
    aliases: dict  # proxy name in the tests -> the program's name (an entry point named like a builtin)


def _bound_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names the tests bind anywhere (assignments, defs, parameters, imports ...), and the
    top-level modules they import."""
    bound, imported = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    bound.add((alias.asname or alias.name).split(".")[0])
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif node.module and not node.level:
                imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    return bound, imported


ENTRY_ALIAS = "_r1mega_entry_point"

# CPython 3.11 keeps the AST builder's recursion counter in one process-wide place: two threads
# building trees at once (a garbage-collection finaliser can switch threads mid-build) fail with
# "SystemError: AST constructor recursion depth mismatch" (seen in a full test run). run_many plans
# from its pool's threads, so trees are built one at a time; a plan costs milliseconds and is cached.
_AST_LOCK = threading.RLock()


def _parse(source: str) -> ast.Module:
    with _AST_LOCK:
        return ast.parse(source)


@functools.lru_cache(maxsize=4096)  # a prompt's tests are planned once for all its samples
def plan(tests: str, entry_point: Optional[str] = None) -> Union[Plan, str]:
    """The judged form of `tests`, or why they cannot run at all (a string)."""
    if entry_point is not None and not entry_point.isidentifier():
        return f"entry_point {entry_point!r} is not a name"
    try:
        tree = _parse(tests)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return f"the tests do not parse ({type(e).__name__})"
    bound, imported = _bound_names(tree)
    # an entry point named like a builtin (`def max`) or like a name the tests bind themselves (a
    # reference solution, check's parameter) reaches check() under an alias: the tests' own max()
    # or reference stays theirs, so a program cannot change the values they compare against
    aliased = bool(entry_point) and (hasattr(builtins, entry_point) or entry_point in bound)
    aliases = {ENTRY_ALIAS: entry_point} if aliased else {}
    if entry_point:
        script = f"{tests}\n\ncheck({ENTRY_ALIAS if aliased else entry_point})\n"
        tree = _parse(script)
    else:
        script = tests
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    used = {n.id for n in loads}
    free = used - bound - {"__name__", "__file__", "__builtins__"}
    free = {n for n in free if not hasattr(builtins, n)}  # a builtin name is the builtin (a program's `def abs` never is)
    # a stdlib name used only as `name.attr` is a module the tests did not import; one they call or
    # pass on (`heapq(xs)`) is the program's function of that name
    bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    bare = {n.id for n in loads if id(n) not in bases}
    modules = sorted(n for n in free if n in sys.stdlib_module_names and n != entry_point and n not in bare)
    proxies = sorted(free - set(modules))
    if not proxies:  # e.g. only comments, or `def check(c): pass` without an entry point: any program would pass
        return "they use no name of the program, so they check nothing of it"
    return Plan(script, proxies, modules, sorted(imported & set(sys.stdlib_module_names)), aliases)
