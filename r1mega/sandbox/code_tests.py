"""Assert-style tests judged in the trainer, so a program cannot forge a pass.

Tests such as `assert add(2, 3) == 5` (MBPP) or HumanEval's `def check(candidate): assert
candidate(...) == ...` are split here, in the trainer, with `ast`: only the side the program
must compute (`add(2, 3)`) goes into the sandbox, which sends back its value strictly serialised
(plain data only: builtin types, subclasses read through their base type, Fraction, Decimal; no
object's own __eq__ ever reaches the trainer); the expected side (`5`)
and the comparison stay here. The program never sees an expected value, so whatever it does to
its own interpreter (always-equal objects, patched builtins, a forged completion token, reading
its memory) it can only pass by producing values equal to the expected ones.

A test file is judged this way only when every statement is one of
  import ... / from ... import ...           (run in the sandbox before the calls)
  assert X == L, X != L, X < L (<=, >, >=), X in L, X not in L, L op X   (L a literal)
  assert abs(X - L) < L2 (or <=, or abs(L - X))                         (float tolerance)
  assert X, assert not X, assert X is None / is not None / is True / is False
  a docstring or `pass`; assignments of names no assert reads (e.g. METADATA = {...})
  `def check(<param>): <the same>` when the sample has an entry_point (<param> is bound to it)
where X contains no comparison, boolean operator or conditional (the judgement stays here). When
the expected value is public (a bool, None, or a truthiness test), X must be a direct call of the
program's function (`f(...)`, not e.g. `math.isclose(f(x), 1.5)` whose judge the program could
patch). Anything else returns None and the caller runs the tests inside the sandbox as written
(not forge-proof; see the README).
"""
from __future__ import annotations

import ast
import builtins
import json
import operator
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

MAX_DEPTH = 100  # nesting of a returned value, both when the sandbox encodes and here
MAX_INT_DIGITS = 4300  # Python's default int <-> str limit
MAX_SHARED_HASH = 8  # set/dict keys of one returned value that may share a hash

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_PUBLIC = (True, False, None)  # expected values a program knows without seeing the tests


@dataclass
class Check:
    """One assert, judged here on the value of its program-side expression."""
    test: Callable[[Any], Any]

    def passes(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except Exception:  # e.g. "abc" < 3, a list in a set: the assert would have raised
            return False


@dataclass
class CallTests:
    setup: str  # the tests' imports, run in the sandbox after the program
    exprs: list[str]  # program-side expressions, evaluated in the sandbox in order
    bind: dict[str, str]  # names the expressions use for the program's function (candidate -> entry_point)
    checks: list[Check] = field(default_factory=list)

    def payload(self) -> dict:
        return {"setup": self.setup, "exprs": self.exprs, "bind": self.bind}

    def judge(self, values: Optional[list]) -> bool:
        """All checks pass on the sandbox's values ({"v": encoded} or {"e": error} each)."""
        if not isinstance(values, list) or len(values) != len(self.checks):
            return False
        for check, item in zip(self.checks, values):
            if not isinstance(item, dict) or "v" not in item:
                return False
            try:
                value = decode(item["v"])
            except (ValueError, TypeError, KeyError, IndexError, RecursionError, ArithmeticError):
                return False
            if not check.passes(value):
                return False
        return True


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _judge_free(node: ast.AST) -> bool:
    return not any(isinstance(n, (ast.Compare, ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr))
                   for n in ast.walk(node))


class _Splitter:
    def __init__(self, bind: dict[str, str], imported: set[str]):
        self.bind, self.imported = bind, imported
        self.exprs: list[str] = []
        self.checks: list[Check] = []

    def _direct_call(self, x: ast.AST) -> bool:
        """x is f(...) with f the program's function (bound name, or a name neither builtin nor imported)."""
        if not (isinstance(x, ast.Call) and isinstance(x.func, ast.Name)):
            return False
        name = x.func.id
        return name in self.bind or (name not in self.imported and not hasattr(builtins, name))

    def _add(self, x: ast.AST, test: Callable[[Any], Any], public: bool) -> bool:
        if not _judge_free(x) or (public and not self._direct_call(x)):
            return False
        self.exprs.append(ast.unparse(x))
        self.checks.append(Check(test))
        return True

    def assertion(self, node: ast.Assert) -> bool:
        t = node.test
        is_lit, lit = _literal(t)
        if is_lit:  # assert True, assert 1 == 1: nothing of the program's to run
            return bool(lit)
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
            return self._add(t.operand, lambda v: not v, public=True)
        if not isinstance(t, ast.Compare):
            return self._add(t, bool, public=True)
        if len(t.ops) != 1:
            return False
        op, left, right = t.ops[0], t.left, t.comparators[0]
        r_lit, r_val = _literal(right)
        l_lit, l_val = _literal(left)
        if isinstance(op, (ast.Is, ast.IsNot)):
            if not (r_lit and any(r_val is p for p in _PUBLIC)):
                return False
            want = isinstance(op, ast.Is)
            return self._add(left, lambda v, e=r_val, w=want: (v is e) == w, public=True)
        fn = _OPS.get(type(op))
        if fn is None:
            return False
        if r_lit and not l_lit:
            tol = self._tolerance(left, op, r_val)
            if tol is not None:
                return tol
            public = any(r_val is p for p in _PUBLIC)
            return self._add(left, lambda v, e=r_val, f=fn: f(v, e), public)
        if l_lit and not r_lit:
            public = any(l_val is p for p in _PUBLIC)
            return self._add(right, lambda v, e=l_val, f=fn: f(e, v), public)
        return False

    def _tolerance(self, left: ast.AST, op: ast.cmpop, tol: Any) -> Optional[bool]:
        """abs(X - L) < tol or abs(L - X) < tol: X runs in the sandbox, the rest here."""
        if not (isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name)
                and left.func.id == "abs" and "abs" not in self.imported and len(left.args) == 1
                and not left.keywords and isinstance(left.args[0], ast.BinOp)
                and isinstance(left.args[0].op, ast.Sub)):
            return None
        a, b = left.args[0].left, left.args[0].right
        (a_lit, a_val), (b_lit, b_val) = _literal(a), _literal(b)
        fn = _OPS[type(op)]
        if b_lit and not a_lit:
            return self._add(a, lambda v, e=b_val, f=fn, t=tol: f(abs(v - e), t), public=False)
        if a_lit and not b_lit:
            return self._add(b, lambda v, e=a_val, f=fn, t=tol: f(abs(e - v), t), public=False)
        return None


def parse(tests: str, entry_point: Optional[str] = None) -> Optional[CallTests]:
    """The forge-proof form of `tests` (see the module doc), or None where it has another shape."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    imported = {(a.asname or a.name).split(".")[0] for n in imports for a in n.names}
    checks_fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if entry_point:  # the reward calls check(entry_point) after the tests
        if len(checks_fn) != 1 or not entry_point.isidentifier():
            return None
        fn = checks_fn[0]
        a = fn.args
        if (len(a.args) != 1 or a.posonlyargs or a.kwonlyargs or a.vararg or a.kwarg or a.defaults
                or fn.decorator_list):
            return None
        bind, body, top = {a.args[0].arg: entry_point}, fn.body, [n for n in tree.body if n is not fn]
    elif checks_fn:
        return None
    else:
        bind, body, top = {}, tree.body, []
    split = _Splitter(bind, imported)
    read = {n.id for n in ast.walk(ast.Module(body=body, type_ignores=[])) if isinstance(n, ast.Name)}
    setup = list(imports)
    for stmt in top + body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if stmt not in setup:
                setup.append(stmt)
                imported |= {(a.asname or a.name).split(".")[0] for a in stmt.names}
        elif isinstance(stmt, ast.Assert):
            if stmt in body:
                if not split.assertion(stmt):
                    return None
            else:
                return None
        elif isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue
        elif isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) and t.id not in read for t in stmt.targets):
            continue  # e.g. METADATA = {...}: nothing reads it
        else:
            return None
    if not split.checks and not body:
        return None
    return CallTests(ast.unparse(ast.Module(body=setup, type_ignores=[])), split.exprs, bind, split.checks)


# ------------------------------------------------------------- the values' wire format
# The sandbox's side (encode) is r1mega/rl/sandbox_init.py:encode_value (stdlib only, same format):
# None/bool/str as JSON; ["i", digits], ["f", repr], ["c", re, im], ["b", hex], ["q", num, den], ["D", str],
# ["l"|"t"|"s"|"fs", [items]], ["d", [[k, v], ...]].


def decode(x: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if x is None or isinstance(x, (bool, str)):
        return x
    tag, body = x[0], x[1]
    if tag == "i":  # bounded here too: a trainer may have lifted Python's int-digits limit (quadratic parse)
        if len(body) > MAX_INT_DIGITS:
            raise ValueError("integer too long")
        return int(body)
    if tag == "f":
        return float(body)
    if tag == "c":
        return complex(float(body), float(x[2]))
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "q":
        if len(body) > MAX_INT_DIGITS or len(x[2]) > MAX_INT_DIGITS:
            raise ValueError("integer too long")
        return Fraction(int(body), int(x[2]))
    if tag == "D":
        if len(body) > MAX_INT_DIGITS:
            raise ValueError("decimal too long")
        return Decimal(body)
    if tag in ("l", "t", "s", "fs"):
        items = [decode(i, depth + 1) for i in body]
        if tag in ("s", "fs"):
            _spread_hashes(items)
        return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
    if tag == "d":
        pairs = [(decode(k, depth + 1), decode(v, depth + 1)) for k, v in body]
        _spread_hashes([k for k, _ in pairs])
        return dict(pairs)
    raise ValueError(f"unknown value tag {tag!r}")


def _spread_hashes(keys: list) -> None:
    """Int, float and tuple hashes are predictable: a set of 30k ints k*(2**61-1) shares one hash
    and takes the trainer minutes to build (each insert probes every earlier one). Plain values
    almost never share a full hash, so many equal hashes are refused in O(n) before any set is built."""
    counts = Counter(map(hash, keys))  # TypeError for unhashable keys: the value is refused
    if counts and max(counts.values()) > MAX_SHARED_HASH:
        raise ValueError("set or dict keys with colliding hashes")


def values_from_stdout(stdout: str) -> tuple[str, Optional[list]]:
    """Split the sandbox's values line (the last line the harness printed) off the program's output."""
    head, _, last = stdout.rpartition("\n")
    if not last.startswith("r1mega-values:"):
        return stdout, None
    try:
        values = json.loads(last[len("r1mega-values:"):])
    except (ValueError, RecursionError):
        return head, None
    return head, values if isinstance(values, list) else None
