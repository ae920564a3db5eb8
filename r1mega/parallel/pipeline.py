"""Pipeline schedules over microbatches, with model chunks for virtual stages.

A schedule is only an order of ("F"|"B", microbatch, chunk) actions for this rank; one executor
runs any of them: activations go forward and gradients back with asynchronous sends (kept alive
until the end) and blocking, tagged receives. Stage of chunk c on pp rank r is c * pp + r.

  gpipe        all forwards, then all backwards (holds every microbatch's activations)
  1f1b         warm-up of (pp - r - 1) forwards, then one-forward-one-backward (<= pp in flight)
  interleaved  1F1B over v chunks per rank (Megatron's virtual pipeline): smaller bubble
A new schedule (e.g. DualPipe) is one more order function in SCHEDULES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.parallel.layout import ParallelState


@dataclass
class Microbatch:
    input_ids: torch.Tensor  # [b, s]
    labels: Optional[torch.Tensor] = None  # [b, s], -100 = ignored
    attn_mask: Optional[torch.Tensor] = None  # document ids [b, s] (packing, left padding); None: causal
    position_ids: Optional[torch.Tensor] = None  # [b, s]
    routing: Optional[dict] = None  # {layer: experts [s, b, k]} to replay (RL)
    extra: Optional[dict] = None  # per-sequence data the loss needs (RL: targets, advantages, ...)
    counted: Optional[torch.Tensor] = None  # [b, s] tokens whose experts count as load (`stage.load_counted`)

    def stage_inputs(self) -> dict:
        """Keyword arguments of a stage call (`r1mega.models.stage`), beside input_ids and hidden;
        optional ones only when set, so a family without e.g. routing replay needs no such argument."""
        out = {"labels": self.labels, "attn_mask": self.attn_mask, "position_ids": self.position_ids}
        if self.routing is not None:
            out["routing"] = self.routing
        if self.counted is not None:
            out["counted"] = self.counted
        return out


Action = tuple[str, int, int]  # ("F" | "B", microbatch, chunk)


def gpipe_order(pp: int, rank: int, m: int, v: int) -> list[Action]:
    fwd = [("F", mb, c) for c in range(v) for mb in range(m)]
    return fwd + [("B", mb, c) for c in reversed(range(v)) for mb in range(m)]


def one_f_one_b_order(pp: int, rank: int, m: int, v: int) -> list[Action]:
    if v != 1:
        raise ValueError("the 1f1b schedule takes one model chunk per rank; use 'interleaved' for more")
    warmup = min(pp - rank - 1, m)
    order = [("F", mb, 0) for mb in range(warmup)]
    for i in range(m - warmup):
        order += [("F", warmup + i, 0), ("B", i, 0)]
    return order + [("B", mb, 0) for mb in range(m - warmup, m)]


def interleaved_order(pp: int, rank: int, m: int, v: int) -> list[Action]:
    if m % pp:
        raise ValueError(f"the interleaved schedule needs microbatches ({m}) divisible by pp ({pp})")
    total = m * v

    def fwd(k: int) -> tuple[int, int]:
        group, within = divmod(k, pp * v)
        return group * pp + within % pp, within // pp

    def bwd(k: int) -> tuple[int, int]:
        mb, chunk = fwd(k)
        return mb, v - 1 - chunk

    warmup = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    order = [("F", *fwd(k)) for k in range(warmup)]
    for i in range(total - warmup):
        order += [("F", *fwd(warmup + i)), ("B", *bwd(i))]
    return order + [("B", *bwd(i)) for i in range(total - warmup, total)]


SCHEDULES: dict[str, Callable[[int, int, int, int], list[Action]]] = {
    "gpipe": gpipe_order, "1f1b": one_f_one_b_order, "interleaved": interleaved_order,
}


def recv_activation(shape, dtype: torch.dtype, device, src: int, tag: int = 0) -> torch.Tensor:
    """Blocking receive of a stage-to-stage tensor (training schedules and generation alike)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(t, src=src, tag=tag)
    return t


def send_activation(t: torch.Tensor, dst: int, tag: int = 0, wait: bool = True):
    """Send a stage-to-stage tensor. wait=False returns (work, tensor): keep both alive until
    work.wait() (the schedules overlap sends with compute)."""
    t = t.detach().contiguous()
    work = dist.isend(t, dst=dst, tag=tag)
    if wait:
        work.wait()
        return None
    return work, t


def activation_shape(mb: Microbatch, hidden: int, ps: ParallelState) -> tuple[int, int, int]:
    b, s = mb.input_ids.shape
    s //= ps.cp  # whole rows in, this context-parallel rank's tokens out
    return (s // ps.tp if ps.sp else s, b, hidden)


@dataclass
class ScheduleStats:
    max_in_flight: int = 0  # most microbatch activations held at once on this rank


class _Executor:
    def __init__(self, chunks, ps: ParallelState, m: int):
        self.chunks, self.ps = chunks, ps
        self.pp, self.rank = ps.pp, ps.r("pp")
        self.members = ps.members.get("pp", [ps.rank])
        self.num_stages = self.pp * len(chunks)
        self.m = m
        param = next(chunks[0].parameters())
        self.dtype, self.device = param.dtype, param.device
        self.sends: list = []

    def stage(self, chunk: int) -> int:
        return chunk * self.pp + self.rank

    def tag(self, mb: int, stage: int, backward: bool) -> int:
        return 2 * (mb * self.num_stages + stage) + int(backward)

    def recv(self, shape, stage: int, mb: int, backward: bool) -> torch.Tensor:
        src = self.members[(stage + (1 if backward else -1)) % self.pp]
        return recv_activation(shape, self.dtype, self.device, src, self.tag(mb, stage, backward))

    def send(self, t: torch.Tensor, to_stage: int, mb: int, backward: bool) -> None:
        dst = self.members[to_stage % self.pp]
        self.sends.append(send_activation(t, dst, self.tag(mb, to_stage, backward), wait=False))

    def finish(self) -> None:
        for work, _ in self.sends:
            work.wait()
        self.sends.clear()


def forward_backward(chunks, microbatches: list[Microbatch], ps: ParallelState, loss_fn: Callable,
                     forward_only: bool = False, schedule: str = "1f1b",
                     stats: Optional[ScheduleStats] = None) -> list:
    """Run every microbatch through this rank's model chunks (a module or a list of them).

    loss_fn(StageOutput, Microbatch) -> loss or (loss, extra), called on the last stage; its
    results are returned in microbatch order (elsewhere an empty list)."""
    chunks = list(chunks) if isinstance(chunks, (list, tuple, torch.nn.ModuleList)) else [chunks]
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
    ex = _Executor(chunks, ps, len(microbatches))
    v, m = len(chunks), len(microbatches)
    if ps.pp == 1 and v == 1:
        order = [a for mb in range(m) for a in (("F", mb, 0), ("B", mb, 0))]
    else:
        order = SCHEDULES[schedule](ps.pp, ex.rank, m, v)
    if forward_only:
        order = [a for a in order if a[0] == "F"]
    held: dict[tuple[int, int], tuple] = {}
    results: dict[int, object] = {}
    hidden = chunks[0].hidden_size
    for kind, mb_i, c in order:
        mb, stage = microbatches[mb_i], ex.stage(c)
        last = stage == ex.num_stages - 1
        if kind == "F":
            x = None
            if stage > 0:
                x = ex.recv(activation_shape(mb, hidden, ps), stage, mb_i, backward=False)
                x.requires_grad_(not forward_only)
            with torch.set_grad_enabled(not forward_only):
                out = chunks[c](mb.input_ids, hidden=x, **mb.stage_inputs())
                if last:
                    res = loss_fn(out, mb)
                    results[mb_i] = res
                    y = res[0] if isinstance(res, tuple) else res
                else:
                    ex.send(out.hidden, stage + 1, mb_i, backward=False)
                    y = out.hidden
            if not forward_only:
                held[(mb_i, c)] = (x, y)
                if stats is not None:
                    stats.max_in_flight = max(stats.max_in_flight, len(held))
        else:
            x, y = held.pop((mb_i, c))
            if last:
                y.backward()
            else:
                torch.autograd.backward(y, ex.recv(y.shape, stage, mb_i, backward=True))
            if stage > 0:
                ex.send(x.grad, stage - 1, mb_i, backward=True)
    ex.finish()
    return [results[i] for i in sorted(results)]
