"""The run setup every command shares: join ranks, validate, build the layout, build/init/place the
model. A thin composition of the functions that do the work, so trainer, grpo and verify-hf start
the same way and a rule changed here holds for all of them.

    run = start_run(cfg, validate_training)            # ranks, config checked, ParallelState, seed
    chunks = build_model(run.cfg, run.ps, run.device, run.dtype)
    ... optimizer, resume (each command's own rules), loop ...
    finish_run(run)
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.config import Config, ConfigError, ModelConfig, TrainConfig
from r1mega.kernels import use_backend
from r1mega.kernels.fp8_backend import fp8_backend
from r1mega.train.model_build import build_chunks, init_weights, place, refuse_unbuildable  # noqa: F401
from r1mega.parallel.layout import (
    ParallelState, build_parallel_state, default_device, join_ranks, single_process_state,
)


@dataclass
class Run:
    cfg: Config  # validated, parallel sizes resolved
    ps: ParallelState
    distributed: bool
    owns_group: bool  # this process created the process group (and destroys it at the end)
    world: int
    device: torch.device
    dtype: torch.dtype

    @property
    def is_logger(self) -> bool:
        return self.ps.rank == 0


def own_checkpoint(ckpt_root: str) -> Optional[str]:
    """The run's own newest checkpoint whose meta.json reads (None for a fresh run); damaged ones
    are left to the resume rules (r1mega/train/checkpoint.py), which warn and fall back."""
    from r1mega.train.checkpoint import CheckpointError, find_resume_checkpoint, read_meta

    for path in find_resume_checkpoint(ckpt_root):
        try:
            read_meta(path)
            return path
        except CheckpointError:
            continue
    return None


def checkpoint_meta(path: str) -> dict:
    meta_file = os.path.join(path, "meta.json")
    if not os.path.exists(meta_file):
        raise ConfigError("train.load", f"{path} is not a checkpoint (no meta.json)")
    with open(meta_file) as f:
        return json.load(f)


def model_from_checkpoint(cfg: Config, own: Optional[str] = None) -> Config:
    """A config that leaves `model` at its defaults takes the model's shapes from the checkpoint it
    starts from (the run's own, else train.load: r1mega-convert import and the trainer record them),
    so a stage config runs on any imported model without restating its architecture."""
    source = own or cfg.train.load
    if source is None or cfg.student is not None or cfg.model != ModelConfig():
        return cfg
    meta = checkpoint_meta(source)
    saved = meta.get("model_config")
    family = meta.get("family", "deepseek_v3")
    if saved is None or family not in ("deepseek_v3", "deepseek_v32"):
        return cfg
    from r1mega.models.family import family_named

    config_cls = family_named(family).config_cls  # ModelConfig, or V3.2's DSAConfig
    known = set(config_cls.__dataclass_fields__)
    return replace(cfg, model=config_cls(**{k: v for k, v in saved.items() if k in known}))


def start_run(cfg: Config, validate_fn: Callable[[Config, int], Config], own_checkpoint: Optional[str] = None) -> Run:
    """Join torchrun's group (if launched by it), fill the model from the checkpoint if the config
    has none, validate before any weight exists, build the rank layout, seed."""
    distributed, owns_group, world = join_ranks()
    cfg = validate_fn(model_from_checkpoint(cfg, own_checkpoint), world)
    ps = build_parallel_state(cfg.parallel) if distributed else single_process_state()
    torch.manual_seed(cfg.seed)
    return Run(cfg, ps, distributed, owns_group, world, default_device(), getattr(torch, cfg.train.dtype))


def build_model(cfg: Config, ps: ParallelState, device: torch.device, dtype: torch.dtype) -> torch.nn.ModuleList:
    """This rank's model chunks, initialised layout-independently, on the device in the weight dtype."""
    try:
        chunks = build_chunks(cfg, ps)
    except (RuntimeError, MemoryError) as e:  # e.g. a model too large for this machine
        if "alloc" not in str(e).lower() and not isinstance(e, (MemoryError, torch.OutOfMemoryError)):
            raise
        raise ConfigError("model", f"this rank's share of the model does not fit in memory "
                          f"({str(e).splitlines()[0]}); check the model sizes, or size a layout with `r1mega plan`"
                          ) from None
    init_weights(chunks, cfg.seed)
    return place(chunks, device, dtype)


def fp8_kernels(t: TrainConfig, log, applies_to: str = ""):
    """The kernels backend for train.fp8 (None for train.fp8=none), announced once in the run's log.
    FP8 covers the GEMMs of the linears and routed experts; the head, router, norms and attention
    core stay in train.dtype. applies_to: what of the run it covers, when not all of it."""
    kernels = fp8_backend(t.fp8, t.fp8_backend, t.fp8_block, t.fp8_pow2_scales)
    if kernels is not None:
        log.print(f"FP8 {t.fp8} (block {t.fp8_block}{', power-of-2 scales' if t.fp8_pow2_scales else ''}) "
                  f"through the {kernels.name} backend{applies_to}")
    return kernels


def kernels_scope(kernels):
    """Run a block on `kernels` (from fp8_kernels), or on the default kernels when it is None."""
    return use_backend(kernels) if kernels is not None else contextlib.nullcontext()


def finish_run(run: Run) -> None:
    if run.distributed and run.owns_group:
        dist.destroy_process_group()


def run_meta(cfg: Config, kind: str, **extra) -> dict:
    """What a checkpoint records about the run besides weights (read back by model_from_checkpoint)."""
    from r1mega.models.family import family_for

    family, model_cfg = family_for(cfg)
    return {"kind": kind, "family": family.name, "model_config": asdict(model_cfg), **extra}
