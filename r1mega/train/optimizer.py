"""ZeRO-1 distributed AdamW and the learning-rate schedule.

Parameters are split into two buckets: dense ones, sharded over data-parallel ranks, and routed
experts, sharded over expert-data-parallel ranks. Each bucket is one flat fp32 space; every rank
owns a contiguous 1/n of it (fp32 master weights + AdamW moments). A step is:
    reduce-scatter grads over the bucket's group -> global grad norm (each element counted once
    across the world) -> NaN/Inf check -> clip -> AdamW on the owned shard -> all-gather params.
The AdamW update is torch.optim.AdamW's, element for element (decoupled weight decay). A step
with a NaN/Inf gradient is skipped; SkipGuard stops a run after too many of them in a row.
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import torch
import torch.distributed as dist

from r1mega.config import ConfigError, OptimConfig
from r1mega.errors import TrainingError
from r1mega.parallel.comm import all_gather_nograd, reduce_scatter_nograd
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import spec_of

STATE_NAMES = ("master", "exp_avg", "exp_avg_sq")
# elements of one bucket state gathered at once over its group (all ranks' pieces together) when a
# checkpoint is saved: the device transient of a save, whatever the model's size
GATHER_WINDOW = 1 << 26


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup to lr over warmup_steps, then decay to min_lr at total_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return cfg.lr
    span = max(total_steps - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.decay == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * frac
    if cfg.decay == "cosine":
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))
    raise ConfigError("optim.decay", f"unknown schedule {cfg.decay!r} (cosine, constant, linear)")


def decays(p: torch.Tensor) -> bool:
    """Weight decay as the parameter's spec says (default: matrices, not norms or biases)."""
    return spec_of(p).decays(p)


def counted_once(p: torch.nn.Parameter, ps: ParallelState) -> bool:
    """Whether this rank counts p in the global grad norm (replicas are counted on one rank)."""
    spec = spec_of(p)
    if spec.copy_of is not None:
        return False
    if spec.is_expert or spec.tp_shard_dim is not None:
        return True
    return ps.r("tp") == 0


class _Bucket:
    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], group, size: int, rank: int):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.group, self.size, self.rank = group, size, rank
        self.numel = sum(p.numel() for p in self.params)
        self.shard = -(-self.numel // size) if self.numel else 0
        self.lo = rank * self.shard
        self.hi = self.lo + self.shard
        flat = self._flat([p.detach() for p in self.params])
        self.master = flat[self.lo:self.hi].clone()
        self.exp_avg = torch.zeros_like(self.master)
        self.exp_avg_sq = torch.zeros_like(self.master)

    def _flat(self, tensors) -> torch.Tensor:
        dev = self.params[0].device if self.params else None
        flat = torch.zeros(self.shard * self.size, dtype=torch.float32, device=dev)
        if tensors:
            flat[: self.numel] = torch.cat([t.reshape(-1).float() for t in tensors])
        return flat

    def mask(self, flags: list[bool]) -> torch.Tensor:
        """bool [shard]: each element of this rank's shard takes its parameter's flag. Built at the
        shard's size: a slice of a whole-bucket tensor would keep the whole bucket's storage alive on
        every rank (a mask per element of every local parameter, whatever the DP size)."""
        out = torch.zeros(self.shard, dtype=torch.bool, device=self.params[0].device if self.params else None)
        at = 0
        for p, flag in zip(self.params, flags):
            lo, hi = max(at, self.lo), min(at + p.numel(), self.hi)
            if flag and lo < hi:
                out[lo - self.lo:hi - self.lo] = True
            at += p.numel()
        return out

    def reduce_scatter_grads(self) -> torch.Tensor:
        flat = self._flat([p.grad for p in self.params])
        if self.group is None:
            return flat
        return reduce_scatter_nograd(flat, self.group)

    def gather_full(self, shard: torch.Tensor) -> list[torch.Tensor]:
        """The full bucket from every rank's shard, split back into parameter shapes."""
        flat = all_gather_nograd(shard, self.group) if self.group is not None else shard
        out, at = [], 0
        for p in self.params:
            out.append(flat[at:at + p.numel()].view(p.shape))
            at += p.numel()
        return out

    def write_params(self) -> None:
        for p, full in zip(self.params, self.gather_full(self.master)):
            p.data.copy_(full)


class DistributedAdamW:
    def __init__(self, chunks: torch.nn.Module, ps: ParallelState, cfg: OptimConfig):
        self.ps, self.cfg = ps, cfg
        named = [(n, p) for n, p in chunks.named_parameters() if p.requires_grad]
        dense = [(n, p) for n, p in named if not spec_of(p).is_expert]
        expert = [(n, p) for n, p in named if spec_of(p).is_expert]
        self.buckets = [
            _Bucket(dense, ps.g("dp_cp"), ps.dp * ps.cp, ps.r("dp_cp")),  # cp ranks hold replicas too
            _Bucket(expert, ps.g("edp"), ps.edp, ps.r("edp")),
        ]
        self.wd_masks = [b.mask([decays(p) for p in b.params]) for b in self.buckets]
        self.norm_masks = [b.mask([counted_once(p, ps) for p in b.params]) for b in self.buckets]
        self.step_count = 0
        self.skipped = 0

    @torch.no_grad()
    def step(self, lr: float) -> tuple[float, bool]:
        """One update from the parameters' .grad (already TP/tie-reduced). Returns (grad norm, skipped)."""
        grads = [b.reduce_scatter_grads() for b in self.buckets]
        sq = sum((g * g * m).sum() for g, m in zip(grads, self.norm_masks))
        sq = torch.as_tensor(sq, dtype=torch.float64, device=grads[0].device).reshape(1)
        if self.ps.world > 1:
            dist.all_reduce(sq)
        norm = float(sq.sqrt())
        if not math.isfinite(norm):
            self.skipped += 1
            return norm, True
        clip = self.cfg.clip_grad
        coef = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
        self.step_count += 1
        c = self.cfg
        bc1 = 1 - c.beta1 ** self.step_count
        bc2_sqrt = math.sqrt(1 - c.beta2 ** self.step_count)
        for b, g, wd in zip(self.buckets, grads, self.wd_masks):
            if b.shard == 0:
                continue
            if coef != 1.0:
                g = g * coef
            b.master.mul_(1 - lr * c.weight_decay * wd)
            b.exp_avg.lerp_(g, 1 - c.beta1)
            b.exp_avg_sq.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
            denom = (b.exp_avg_sq.sqrt() / bc2_sqrt).add_(c.eps)
            b.master.addcdiv_(b.exp_avg, denom, value=-lr / bc1)
        for b in self.buckets:
            if b.numel:
                b.write_params()
        return norm, False

    # ---- checkpoint support: per-parameter states, independent of the DP sharding -------------
    @torch.no_grad()
    def full_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """{param name: {master, exp_avg, exp_avg_sq}} in local (TP/EP-sharded) shapes, float32 in host
        memory, on the first rank of each bucket's group: the rank that writes those pieces of a
        checkpoint (the others get no entry for that bucket). Collective. The shards are gathered
        GATHER_WINDOW elements at a time and copied out to the host, so no rank's device ever holds
        a whole bucket's states (12 bytes per local parameter: what ZeRO-1 shards over DP)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for b in self.buckets:
            if not b.numel:
                continue
            writer = b.rank == 0
            held = {n: {k: torch.empty(p.shape, dtype=torch.float32) for k in STATE_NAMES}
                    for n, p in zip(b.names, b.params)} if writer else {}
            starts = list(itertools.accumulate((p.numel() for p in b.params), initial=0))
            window = max(1, GATHER_WINDOW // b.size)
            for k in STATE_NAMES:
                shard = getattr(b, k)
                for w in range(0, b.shard, window):
                    piece = shard[w:w + window]
                    got = all_gather_nograd(piece, b.group) if b.group is not None else piece
                    if not writer:
                        continue
                    got = got.view(b.size, -1).cpu()
                    for r in range(b.size):  # rank r's piece: flat elements [r * shard + w, ... + len)
                        lo = r * b.shard + w
                        hi = lo + got.shape[1]
                        i = bisect.bisect_right(starts, lo) - 1
                        while i < len(b.params) and starts[i] < hi:
                            a, e = max(starts[i], lo), min(starts[i + 1], hi)
                            held[b.names[i]][k].view(-1)[a - starts[i]:e - starts[i]].copy_(got[r, a - lo:e - lo])
                            i += 1
            out.update(held)
        return out

    @torch.no_grad()
    def load_full_states(self, states: dict[str, dict[str, torch.Tensor]], step_count: int) -> None:
        for b in self.buckets:
            if not b.numel:
                continue
            for k in ("master", "exp_avg", "exp_avg_sq"):
                flat = b._flat([states[n][k] for n in b.names])
                getattr(b, k).copy_(flat[b.lo:b.hi])
            b.write_params()
        self.step_count = step_count

    @contextlib.contextmanager
    def offloaded(self, offload: bool = True):
        """The block runs with master weights and moments in host memory (when `offload`), then they go
        back: one bracket, so a caller cannot offload and forget to reload."""
        if offload:
            self.offload()
        yield
        self.reload()

    def offload(self) -> None:
        """Move master weights and moments to host memory (e.g. while rollouts need the GPU)."""
        self._home = self.buckets[0].master.device
        if self._home.type == "cpu":
            return
        for b in self.buckets:
            for k in ("master", "exp_avg", "exp_avg_sq"):
                setattr(b, k, getattr(b, k).to("cpu", non_blocking=True).pin_memory())

    def reload(self) -> None:
        home = getattr(self, "_home", None)
        if home is None or home.type == "cpu":
            return
        for b in self.buckets:
            for k in ("master", "exp_avg", "exp_avg_sq"):
                setattr(b, k, getattr(b, k).to(home, non_blocking=True))
        for m in (self.wd_masks, self.norm_masks):
            for i, t in enumerate(m):
                m[i] = t.to(home)

    @torch.no_grad()
    def reset_from_params(self) -> None:
        """Master weights from the current parameters, fresh moments (after loading weights only)."""
        for b in self.buckets:
            if b.numel:
                b.master.copy_(b._flat([p.detach() for p in b.params])[b.lo:b.hi])
                b.exp_avg.zero_()
                b.exp_avg_sq.zero_()
        self.step_count = 0

    def fresh_moments(self) -> None:
        """Zero moments and step count, the loaded fp32 master weights kept (a run starting from a model
        another kind of run trained; its parameters may be bf16 copies of the masters)."""
        for b in self.buckets:
            if b.numel:
                b.exp_avg.zero_()
                b.exp_avg_sq.zero_()
        self.step_count = 0
        self.skipped = 0

    def zero_grad(self, chunks: torch.nn.Module) -> None:
        for p in chunks.parameters():
            p.grad = None


class SkipGuard:
    """A step whose loss or gradient is NaN/Inf leaves the weights as they were (the optimizer skips
    it) and is announced; after train.max_consecutive_skips of them in a row the run stops rather
    than save a broken model."""

    def __init__(self, limit: int, log):
        self.limit, self.log, self.in_a_row = limit, log, 0

    def after_step(self, step: int, skipped: bool, skipped_so_far: int, advice: str) -> None:
        """`step`: the 1-based step just taken. The skip decision is the same on every rank (a
        global norm), so every rank stops together. advice: what the user can do, for the error."""
        if skipped:
            self.log.print(f"step {step}: non-finite loss or gradient, update skipped ({skipped_so_far} so far)")
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if self.limit and self.in_a_row >= self.limit:
            self.log.close()
            raise TrainingError(f"steps {step + 1 - self.in_a_row}..{step} all had a non-finite loss or gradient "
                                f"(train.max_consecutive_skips={self.limit}); stopped without saving. {advice}")
