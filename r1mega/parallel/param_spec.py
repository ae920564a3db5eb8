"""One typed record per parameter of how it is laid out and treated, read by every generic layer
(gradient sync, optimizer, checkpoints, initialisation) instead of loose attributes.

Layers state the facts where they create a parameter, `tag(param, **fields)`; `spec_of(p)` reads
them back (an untagged tensor gets the defaults: TP-replicated on the residual stream only in
name, i.e. no reduction, weight decay on matrices, normal init for matrices and zeros otherwise).
An unknown field or an inconsistent combination is an error at model construction time.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

PARTIAL_KINDS = (None, "region", "stream")
INIT_KINDS = (None, "normal", "ones", "zeros")


@dataclass(frozen=True)
class ParamSpec:
    # sharded over tensor parallelism along this dim (no TP reduction of its gradient)
    tp_shard_dim: Optional[int] = None
    # replicated over TP with a partial gradient: "region" (used inside a TP region: MLA
    # down-projections, router, replicated GQA key/value projections) always all-reduced over TP;
    # "stream" (residual-stream norms, row-parallel biases) only under sequence parallelism
    tp_partial: Optional[str] = None
    is_expert: bool = False  # a routed expert: EP-sharded, reduced over expert-data-parallel ranks
    etp_shard_dim: Optional[int] = None  # expert-TP shard dim of the stacked [E, out, in] weight
    tied_embedding: bool = False  # gradient summed with the other copies over the "embed" group
    # checkpoint key of the tensor this parameter duplicates (the last stage's embedding copy):
    # initialised and loaded from it, never written, counted once in the gradient norm
    copy_of: Optional[str] = None
    weight_decay: Optional[bool] = None  # None: matrices decay, vectors do not
    init: Optional[str] = None  # None: "normal" for matrices, "zeros" for vectors

    def __post_init__(self):
        if self.tp_partial not in PARTIAL_KINDS:
            raise ValueError(f"tp_partial must be one of {PARTIAL_KINDS}, got {self.tp_partial!r}")
        if self.init not in INIT_KINDS:
            raise ValueError(f"init must be one of {INIT_KINDS}, got {self.init!r}")
        if self.tp_shard_dim is not None and self.tp_partial is not None:
            raise ValueError("a parameter is either TP-sharded (tp_shard_dim) or replicated (tp_partial), not both")
        if self.etp_shard_dim is not None and not self.is_expert:
            raise ValueError("etp_shard_dim is only meaningful for routed experts (is_expert=True)")
        if self.copy_of is not None and not self.tied_embedding:
            raise ValueError("copy_of marks a tied copy; it needs tied_embedding=True")

    def decays(self, t: torch.Tensor) -> bool:
        return t.dim() >= 2 if self.weight_decay is None else self.weight_decay

    def init_kind(self, t: torch.Tensor) -> str:
        return self.init or ("normal" if t.dim() >= 2 else "zeros")

    def tp_reduced(self, sp: bool) -> bool:
        """Whether the gradient is partial over TP and must be all-reduced."""
        return self.tp_partial == "region" or (self.tp_partial == "stream" and sp)


_FIELDS = {f.name for f in fields(ParamSpec)}
_DEFAULT = ParamSpec()


def tag(param: torch.Tensor, **updates) -> torch.Tensor:
    """Add facts to `param`'s spec (merged with what it already has). Unknown fields raise."""
    unknown = set(updates) - _FIELDS
    if unknown:
        raise TypeError(f"tag(): unknown parameter spec field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    param.spec = replace(spec_of(param), **updates)
    return param


def spec_of(t: torch.Tensor) -> ParamSpec:
    return getattr(t, "spec", _DEFAULT)
