"""Plain data across the sandbox's walls (stdlib only: the sandbox's zygote imports this file too).

A value crosses as JSON built from its data alone: None/bool/str as themselves; ["i", digits],
["f", repr], ["c", re, im], ["b", hex] (bytes), ["ba", hex] (bytearray), ["q", num, den]
(Fraction), ["D", str] (Decimal), ["l"|"t"|"s"|"fs", [items]], ["d", [[k, v], ...]],
["r", start, stop, step] (range), ["it", [items]] (a generator or builtin iterator, drained here
within the caps and arriving as an iterator over those items).
Subclasses of the builtin types (Counter, defaultdict, namedtuple, IntEnum, an int subclass with
its own __eq__) are read through their base type's own C methods, so what travels is the data
they hold, never the result of an override (__eq__, __iter__, __repr__, __sub__ ...); on the
other side they arrive as the base type. Anything else (functions, generators, class instances)
is refused, except that the judge's callables (the tests' lambdas, `len`) cross to the program as
["fn", id] when encode() is given a registry: the program gets a stub whose calls come back to
the judge, which runs the callable on plain data (decode()'s `stub`). Nothing the program sends
is decoded with a stub maker, so no callable ever crosses from the program.
Both directions are capped: nesting (MAX_DEPTH), total items (MAX_ITEMS), digits of
an int (MAX_INT_DIGITS), and set/dict keys sharing a hash (MAX_SHARED_HASH), so decoding a
hostile value costs linear time.
"""
import itertools
import json
import types
from collections import Counter
from decimal import Decimal
from fractions import Fraction

MAX_DEPTH = 100
MAX_ITEMS = 1 << 20  # scalars and containers in one value
MAX_INT_DIGITS = 4300  # Python's default int <-> str limit
MAX_SHARED_HASH = 8  # set/dict keys of one value that may share a hash


class NotPlain(TypeError):
    """A value that is not plain data (or exceeds a cap) and so cannot cross. `value` is the
    offending object (None for a cap), so the judge can tell the tests' own lambdas and objects
    from anything derived from the program's answers."""

    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


_ITERATORS = (types.GeneratorType, map, filter, zip, enumerate, reversed, type(iter([])), type(iter(())),
              type(iter("")), type(iter(range(0))), type(iter(set())), type(iter({})), type(iter({}.values())),
              type(iter({}.items())), type(iter(b"")), itertools.chain, itertools.islice, itertools.count,
              itertools.product, itertools.permutations, itertools.combinations, itertools.accumulate,
              itertools.starmap, itertools.zip_longest, itertools.repeat, itertools.cycle)
_FRACTION_NUM, _FRACTION_DEN = Fraction.__dict__["_numerator"], Fraction.__dict__["_denominator"]
_CONTAINERS = ((list, "l", list.copy), (tuple, "t", lambda v: tuple.__getitem__(v, slice(None))),
               (set, "s", set.copy), (frozenset, "fs", frozenset.copy),
               (type({}.keys()), "s", set), (type({}.items()), "s", set),  # these views compare like sets
               (type({}.values()), "l", list))


def encode(v, _budget=None, depth: int = 0, fns=None):
    """v as JSON-ready plain data; NotPlain for anything else. fns: a registry (list) of the
    judge's callables; a callable is then added to it and crosses as ["fn", its index]."""
    budget = _budget if _budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise NotPlain("value too large")
    if depth > MAX_DEPTH:
        raise NotPlain("value nested too deeply")
    t = type(v)
    if v is None or t is bool:
        return v
    if isinstance(v, bool):  # a bool subclass cannot exist; kept for clarity
        return bool(v)
    if isinstance(v, int):
        return ["i", int.__repr__(int.__index__(v))]
    if isinstance(v, float):
        return ["f", float.__repr__(float.__float__(v))]
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, complex):
        return ["c", float.__repr__(complex.real.__get__(v)), float.__repr__(complex.imag.__get__(v))]
    if isinstance(v, bytes):
        return ["b", bytes.hex(v)]
    if isinstance(v, bytearray):
        return ["ba", bytearray.hex(v)]
    if isinstance(v, Fraction):
        return ["q", int.__repr__(_FRACTION_NUM.__get__(v)), int.__repr__(_FRACTION_DEN.__get__(v))]
    if isinstance(v, Decimal):
        return ["D", Decimal.__str__(v)]
    if t is range:
        return ["r", int.__repr__(v.start), int.__repr__(v.stop), int.__repr__(v.step)]
    if t in _ITERATORS:  # exact types only: a class of the program's with __next__ is not plain
        items = []
        for item in v:  # runs the program's generator, in its own process
            if len(items) >= budget[0]:
                raise NotPlain("value too large")
            items.append(item)
        return ["it", [encode(i, budget, depth + 1, fns) for i in items]]
    if isinstance(v, dict):
        return ["d", [[encode(k, budget, depth + 1, fns), encode(i, budget, depth + 1, fns)] for k, i in dict.items(dict.copy(v))]]
    for typ, tag, plain in _CONTAINERS:
        if isinstance(v, typ):
            return [tag, [encode(i, budget, depth + 1, fns) for i in plain(v)]]
    if fns is not None and callable(v):
        fns.append(v)
        return ["fn", str(len(fns) - 1)]
    raise NotPlain(f"a {t.__name__} is not plain data (int, float, complex, str, bytes, bytearray, bool, None, "
                   "list, tuple, dict, set, frozenset, Fraction, Decimal or a subclass of one)", v)


def dumps(v) -> str:
    return json.dumps(encode(v), separators=(",", ":"))


def decode(x, _budget=None, depth: int = 0, stub=None):
    """The value encode() wrote; ValueError/TypeError for anything malformed or over a cap.
    stub(index): the callable standing for the judge's ["fn", index] (None: refused)."""
    budget = _budget if _budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("value too large")
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if x is None or isinstance(x, (bool, str)):
        return x
    if not isinstance(x, list) or len(x) < 2 or not isinstance(x[0], str):
        raise ValueError("malformed value")
    tag, body = x[0], x[1]
    if tag in ("i", "q", "D", "f", "c", "b", "ba", "r") and not (isinstance(body, str) and all(isinstance(p, str) for p in x[2:])):
        raise ValueError("malformed scalar")
    if tag == "i":  # bounded here too: a process may have lifted Python's int-digits limit (quadratic parse)
        if len(body) > MAX_INT_DIGITS:
            raise ValueError("integer too long")
        return int(body)
    if tag == "f":
        return float(body)
    if tag == "c":
        return complex(float(body), float(x[2]))
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "ba":
        return bytearray.fromhex(body)
    if tag == "q":
        if len(body) > MAX_INT_DIGITS or len(x[2]) > MAX_INT_DIGITS:
            raise ValueError("integer too long")
        return Fraction(int(body), int(x[2]))
    if tag == "D":
        if len(body) > MAX_INT_DIGITS:
            raise ValueError("decimal too long")
        return Decimal(body)
    if tag == "r":
        if len(x) != 4 or any(len(p) > MAX_INT_DIGITS for p in x[1:]):
            raise ValueError("malformed range")
        return range(int(body), int(x[2]), int(x[3]))
    if tag == "fn":
        if stub is None or not isinstance(body, str) or not body.isdigit() or len(body) > 9:
            raise ValueError("malformed value")
        return stub(int(body))
    if not isinstance(body, list):
        raise ValueError("malformed container")
    if tag == "it":
        return iter([decode(i, budget, depth + 1, stub) for i in body])
    if tag in ("l", "t", "s", "fs"):
        items = [decode(i, budget, depth + 1, stub) for i in body]
        if tag in ("s", "fs"):
            _spread_hashes(items)
        return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
    if tag == "d":
        pairs = []
        for kv in body:
            if not isinstance(kv, list) or len(kv) != 2:
                raise ValueError("malformed dict item")
            pairs.append((decode(kv[0], budget, depth + 1, stub), decode(kv[1], budget, depth + 1, stub)))
        _spread_hashes([k for k, _ in pairs])
        return dict(pairs)
    raise ValueError(f"unknown value tag {tag!r}")


def loads(text):
    return decode(json.loads(text))


def _spread_hashes(keys: list) -> None:
    """Int, float and tuple hashes are predictable: a set of 30k ints k*(2**61-1) shares one hash
    and takes minutes to build (each insert probes every earlier one). Plain values almost never
    share a full hash, so many equal hashes are refused in O(n) before any set is built."""
    counts = Counter(map(hash, keys))  # TypeError for unhashable keys: the value is refused
    if counts and max(counts.values()) > MAX_SHARED_HASH:
        raise ValueError("set or dict keys with colliding hashes")
