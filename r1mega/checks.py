"""The small rules every config section is checked with; each raises ConfigError naming the key."""
from __future__ import annotations

import math

from r1mega.errors import ConfigError

# no real model comes near this; a larger value is a typo that would overflow tensor sizes
MAX_MODEL_DIM = 2 ** 31 - 1


def need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(key, msg)


def at_least(obj, section: str, minimum: float, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        need(v is not None and math.isfinite(v) and v >= minimum, f"{section}.{name}", f"must be >= {minimum}, got {v}")


def positive(obj, section: str, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        need(v is not None and math.isfinite(v) and v > 0, f"{section}.{name}", f"must be > 0, got {v}")


def one_of(value, key: str, choices: tuple) -> None:
    names = [str(c) for c in choices]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    need(value in choices, key, f"expected {listed}, got {value!r}")


def pipeline_split(num_layers: int, pp: int, pp_layers, section: str) -> None:
    """The layers of a model (its `section`) fill `pp` stages, as `pp_layers` says when given."""
    need(num_layers >= pp, "parallel.pp",
         f"{num_layers} layers cannot fill {pp} pipeline stages ({section}.num_layers < parallel.pp)")
    if pp_layers is not None:
        need(len(pp_layers) == pp, "parallel.pp_layers", f"has {len(pp_layers)} entries for {pp} pipeline stages")
        need(all(n >= 1 for n in pp_layers), "parallel.pp_layers", "every stage needs >= 1 layer")
        need(sum(pp_layers) == num_layers, "parallel.pp_layers",
             f"sums to {sum(pp_layers)} but {section}.num_layers = {num_layers}")
