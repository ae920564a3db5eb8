"""Rank layout and process groups, explicit and passed around (no module-level state).

The rank order is Megatron-LM's default `tp-cp-ep-dp-pp` (tp fastest), with MoE parallel
folding: attention ranks decompose as (tp, cp, dp, pp) and expert ranks as (etp, ep, edp, pp) over
the same world, so EP may span attention TP/CP/DP ranks. Context-parallel ranks hold different
tokens of the same sequences, so gradients of dense parameters are summed over `dp_cp` (the
ranks differing in cp or dp, Megatron's dp-cp group); experts' edp already spans cp. `rank_groups` reproduces
megatron.core.parallel_state.RankGenerator (a test checks it rank for rank); it is re-written here
because importing megatron.core costs ~7 s per process, which every spawned rank would pay.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.parallel.config import ParallelConfig


def rank_groups(sizes: list[tuple[str, int]], name: str) -> list[list[int]]:
    """Groups of ranks that differ only along dimension `name` (or along several, "cp-dp": the
    named dims must be adjacent, fastest first); `sizes` lists dims fastest first."""
    names = [n for n, _ in sizes]
    wanted = name.split("-")
    first = names.index(wanted[0])
    if names[first:first + len(wanted)] != wanted:
        raise ValueError(f"rank_groups: {name!r} are not adjacent dims of {names}")
    merged = 1
    for _, s in sizes[first:first + len(wanted)]:
        merged *= s
    sizes = sizes[:first] + [(name, merged)] + sizes[first + len(wanted):]
    dim = first
    strides, acc = [], 1
    for _, s in sizes:
        strides.append(acc)
        acc *= s
    others = [(s, st) for i, ((_, s), st) in enumerate(zip(sizes, strides)) if i != dim]
    groups = []
    n_other = acc // sizes[dim][1]
    for idx in range(n_other):
        base, rem = 0, idx
        for s, st in others:
            base += (rem % s) * st
            rem //= s
        groups.append([base + k * strides[dim] for k in range(sizes[dim][1])])
    return groups


def attention_dims(p: ParallelConfig) -> list[tuple[str, int]]:
    return [("tp", p.tp), ("cp", p.cp), ("dp", p.dp), ("pp", p.pp)]


def expert_dims(p: ParallelConfig) -> list[tuple[str, int]]:
    edp = p.tp * p.cp * p.dp // (p.expert_tp * p.ep)
    return [("etp", p.expert_tp), ("ep", p.ep), ("edp", edp), ("pp", p.pp)]


@dataclass
class ParallelState:
    """This rank's place in the layout and the groups it belongs to (None for a size-1 group)."""

    cfg: ParallelConfig
    rank: int = 0
    world: int = 1
    ranks: dict[str, int] = field(default_factory=dict)  # tp/cp/dp/dp_cp/pp/etp/ep/edp -> index
    groups: dict[str, Optional[dist.ProcessGroup]] = field(default_factory=dict)
    members: dict[str, list[int]] = field(default_factory=dict)  # global ranks of each group

    # sizes -----------------------------------------------------------------
    @property
    def tp(self) -> int:
        return self.cfg.tp

    @property
    def pp(self) -> int:
        return self.cfg.pp

    @property
    def dp(self) -> int:
        return self.cfg.dp

    @property
    def cp(self) -> int:
        return self.cfg.cp

    @property
    def ep(self) -> int:
        return self.cfg.ep

    @property
    def etp(self) -> int:
        return self.cfg.expert_tp

    @property
    def edp(self) -> int:
        return self.tp * self.cp * self.dp // (self.etp * self.ep)

    @property
    def sp(self) -> bool:
        return self.cfg.sp and self.cfg.tp > 1 and _SP_OFF.get() is not self

    # ranks -----------------------------------------------------------------
    def r(self, name: str) -> int:
        return self.ranks.get(name, 0)

    def g(self, name: str) -> Optional[dist.ProcessGroup]:
        return self.groups.get(name)

    @property
    def is_first_stage(self) -> bool:
        return self.r("pp") == 0

    @property
    def is_last_stage(self) -> bool:
        return self.r("pp") == self.pp - 1

    def describe(self) -> str:
        return (f"rank {self.rank}: tp {self.r('tp')}/{self.tp} pp {self.r('pp')}/{self.pp} "
                f"dp {self.r('dp')}/{self.dp} ep {self.r('ep')}/{self.ep} etp {self.r('etp')}/{self.etp} "
                f"edp {self.r('edp')}/{self.edp} cp {self.r('cp')}/{self.cp} sp={self.sp}")


# the ParallelState whose sequence parallelism is off in this context (decoding), see below
_SP_OFF: contextvars.ContextVar = contextvars.ContextVar("r1mega_sequence_parallel_off", default=None)


@contextlib.contextmanager
def sequence_parallel_off(ps: ParallelState):
    """Run a block with `ps.sp` False (a decoding step's one token per row cannot be split over tp).
    Scoped to the block's thread or task; the layout itself is not changed."""
    token = _SP_OFF.set(ps)
    try:
        yield
    finally:
        _SP_OFF.reset(token)


def single_process_state() -> ParallelState:
    return ParallelState(cfg=ParallelConfig(tp=1, pp=1, ep=1, etp=1, dp=1))


def build_parallel_state(cfg: ParallelConfig) -> ParallelState:
    """Create every group of the layout. All ranks must call this together (dist initialised)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    assert cfg.dp is not None and cfg.tp * cfg.cp * cfg.pp * cfg.dp == world, "call config.validate first"
    state = ParallelState(cfg=cfg, rank=rank, world=world)
    plans = [(n, n, attention_dims(cfg)) for n in ("tp", "cp", "dp", "pp")]
    plans += [("dp_cp", "cp-dp", attention_dims(cfg))]
    plans += [(n, n, expert_dims(cfg)) for n in ("etp", "ep", "edp")]
    for name, dims_name, dims in plans:
        for ranks in rank_groups(dims, dims_name):
            # new_group is collective over the world: every rank creates every group, in order
            group = dist.new_group(ranks) if len(ranks) > 1 else None
            if rank in ranks:
                state.groups[name] = group
                state.members[name] = ranks
                state.ranks[name] = ranks.index(rank)
    # First and last pipeline stage share the embedding (MTP's copy lives on the last stage).
    if cfg.pp > 1:
        for ranks in rank_groups(attention_dims(cfg), "pp"):
            pair = [ranks[0], ranks[-1]]
            group = dist.new_group(pair)
            if rank in pair:
                state.groups["embed"] = group
                state.members["embed"] = pair
    return state


def init_distributed(backend: Optional[str] = None) -> None:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, nccl on GPU)."""
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def join_ranks() -> tuple[bool, bool, int]:
    """(distributed, owns_group, world): join torchrun's process group if launched by it; a caller
    that already initialised one (tests) keeps it, and the command must not destroy it."""
    owns_group = not dist.is_initialized()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or not owns_group
    if distributed:
        init_distributed()
    return distributed, owns_group, dist.get_world_size() if distributed else 1


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
