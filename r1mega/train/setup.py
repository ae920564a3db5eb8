"""The run setup every command shares: join ranks, validate, build the layout, claim the run
directory, build this rank's model. A thin composition of the functions that do the work, so trainer,
grpo and verify-hf start the same way and a rule changed here holds for all of them.

    run = start_run(cfg, kind, validate_training)      # ranks, config checked, layout, family, seed, run dir
    chunks = build_model(run)                          # the family's stages, initialised, placed
    ... optimizer, resume (each command's own rules), loop ...
    finish_run(run)

This rank's model (`build_model` does all three for a started run; `build_chunks` builds the stages
alone, for generation and tests): the family's stage modules for each virtual pipeline chunk,
layout-independent initial weights, and placement on the device in the weight dtype.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.config import Config, ConfigError
from r1mega.models.family import (ModelFamily, at_family_defaults, family_for, family_from_meta, family_of,
                                  family_of_config, model_of_checkpoint)
from r1mega.parallel.layout import (
    ParallelState, build_parallel_state, default_device, join_ranks, single_process_state,
)
from r1mega.parallel.param_spec import spec_of
from r1mega.parallel.recompute import set_recompute


@dataclass
class Run:
    cfg: Config  # validated, parallel sizes resolved
    ps: ParallelState
    distributed: bool
    owns_group: bool  # this process created the process group (and destroys it at the end)
    world: int
    device: torch.device
    dtype: torch.dtype
    family: ModelFamily  # of the active model, cfg.active_model
    arch: dict  # its architecture keys (training keys left out): what a checkpoint must match
    lock: Optional[object] = None  # the run directory's lock (r1mega/output_dir.py), held by rank 0
    hf_config: Optional[dict] = None  # the config.json of the imported model it started from (exports keep its keys)

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


def model_from_checkpoint(cfg: Config, own: Optional[str] = None) -> tuple[Config, ModelFamily]:
    """(config, its model's family). A config that leaves its model at its family's defaults takes
    the model's family and shapes from the checkpoint it starts from (the run's own, else train.load:
    r1mega-convert import and the trainer record them), so a stage config runs on any imported model
    without restating it. The config's training keys (e.g. model.mtp_weight) are kept."""
    source, m = own or cfg.train.load, cfg.active_model
    if own is not None and cfg.train.load is not None:
        _warn_if_load_differs(own, cfg.train.load)
    from r1mega.train.checkpoint import check_saved_model, checkpoint_meta

    family, defaults = family_of_config(m), at_family_defaults(m)
    if source is not None and not defaults:
        # a model section of its own: a checkpoint holding another model (family or shapes, outside
        # train.allow_arch_change) is refused now, by key, as its load would refuse it later: before the
        # tokenizer, prompts and positions are checked against a model the run never builds, and before a
        # plan or dry run sizes it
        check_saved_model(source, family.architecture(m), cfg.train.allow_arch_change)
        return cfg, family
    meta = checkpoint_meta(source) if source is not None else None
    if meta is None:
        return cfg, family
    saved_family, saved = model_of_checkpoint(meta, m, source, cfg.model_section)
    return replace(cfg, model=saved, student=None), saved_family


def _warn_if_load_differs(own: str, load: str) -> None:
    """A run resumes from its own checkpoint whatever train.load says; say so when train.load is
    another model, which a user changing it on a rerun would otherwise never learn."""
    import sys

    from r1mega.train.checkpoint import arch_differences, checkpoint_meta

    try:
        own_model, load_model = (family_from_meta(checkpoint_meta(p)) for p in (own, load))
    except Exception:  # an unreadable train.load is not used on a resume; the run's own is checked later
        return
    # the model itself, not its training keys (e.g. a V3.2 stage's dsa_stage), compared as a resume compares it
    own_arch, load_arch = (f.architecture(m) for f, m in (own_model, load_model))
    if own_model[0] is not load_model[0] or arch_differences(own_arch, load_arch):
        print(f"warning: train.load={load} is another model ({load_model[0].name}) than this run's own checkpoint "
              f"{own} ({own_model[0].name}); resuming the run's own: train.load only starts a new run. "
              f"Use another train.run_dir to start from it", file=sys.stderr, flush=True)


def start_run(cfg: Config, command: str, validate_fn: Callable[[Config, int], Config],
              own_checkpoint: Optional[str] = None) -> Run:
    """Join torchrun's group (if launched by it), fill the model from the checkpoint if the config
    has none, validate before any weight exists, build the rank layout, seed; then refuse a
    train.run_dir that `command` may not write into (what claim_run_dir would refuse: a file; a
    non-empty directory `command` did not make), before anything is built, e.g. a synthetic corpus.
    Writes nothing."""
    from r1mega.output_dir import check

    distributed, owns_group, world = join_ranks()
    configured, load = cfg.active_model, cfg.train.load
    cfg, family = model_from_checkpoint(cfg, own_checkpoint)  # reads train.load when the model comes from it
    if own_checkpoint is not None or at_family_defaults(configured):
        load = None  # read above, or not used (a resume)
    if load is not None:  # else named only after the data is built (a synthetic corpus, on disk)
        from r1mega.train.checkpoint import check_load, read_meta

        check_load(load)
        read_meta(load)
    cfg = validate_fn(cfg, world)
    ps = build_parallel_state(cfg.parallel) if distributed else single_process_state()
    torch.manual_seed(cfg.seed)
    arch = {k: v for k, v in asdict(cfg.active_model).items() if k not in family.training_keys}
    run_dir = cfg.train.run_dir
    for path in (run_dir, os.path.join(run_dir, "checkpoints")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError("train.run_dir", f"{path} exists and is not a directory")
    check(run_dir, command, "train.run_dir")
    return Run(cfg, ps, distributed, owns_group, world, default_device(), getattr(torch, cfg.train.dtype), family,
               arch)


def claim_run_dir(run: Run, command: str) -> None:
    """Claim and lock train.run_dir for `command` (r1mega/output_dir.py): after the inputs are
    checked, before its checkpoints are read or anything is written. Every rank stops if it fails."""
    from r1mega.output_dir import claim_on_rank0, config_hash

    settings = {k: v for k, v in asdict(run.cfg).items() if k != "train"}  # train.steps may grow on a resume
    run.lock = claim_on_rank0(run.cfg.train.run_dir, command, "train.run_dir", config_hash(settings))


def finish_run(run: Run) -> None:
    if run.lock is not None:
        run.lock.release()
    if run.distributed and run.owns_group:
        dist.destroy_process_group()


# ---- this rank's model ---------------------------------------------------------------------------

def host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
        return None


def refuse_unbuildable(family, m, section: str, world: int) -> None:
    """Refuse a model no rank of this machine could hold, before building it. Construction goes
    layer by layer, so an absurd size (model.num_layers=10**9) would otherwise run for hours before
    the allocator gives up. The bound is a floor -- every rank holds at least 1/world of the
    parameters, built in float32 -- so nothing that could fit is refused (`r1mega plan` sizes a
    layout exactly). It blames num_layers when one layer of the model would fit. `m`: the model
    config of `family`, given in the run config's `section`."""
    memory = host_memory_bytes()
    if memory is None:
        return
    need = lambda c: family.count_params(c)["total"] * 4 / max(world, 1)  # noqa: E731
    if need(m) <= memory:
        return
    key = f"{section}.num_layers" if need(replace(m, num_layers=1)) <= memory else section
    raise ConfigError(key, f"{family.count_params(m)['total']:,} parameters ({section}.num_layers={m.num_layers}, "
                      f"{section}.hidden_size={m.hidden_size}) need at least {need(m) / 2**30:,.1f} GiB per rank on "
                      f"{world} rank(s), more than this machine's {memory / 2**30:,.1f} GiB of memory; check the "
                      f"model sizes, or size a layout with `r1mega plan`")


def build_chunks(cfg: Config, ps: ParallelState) -> torch.nn.ModuleList:
    """This rank's model chunks (one per virtual pipeline stage) of the config's model family,
    recomputing in backward what train.recompute selects."""
    chunks = build_stages(family_for(cfg)[0], cfg, ps)
    set_recompute(chunks, cfg.train.recompute, cfg.train.recompute_modules)
    return chunks


def build_stages(family, cfg: Config, ps: ParallelState) -> torch.nn.ModuleList:
    """build_chunks of a known family (that of cfg.active_model)."""
    model_cfg = cfg.active_model
    # before a layer-by-layer build that could never finish
    refuse_unbuildable(family, model_cfg, cfg.model_section, ps.world)
    v = cfg.train.virtual_stages
    chunks = torch.nn.ModuleList(
        family.build_stage(model_cfg, ps, cfg.parallel.pp_layers if v == 1 else None,
                           stage=c * ps.pp + ps.r("pp"), num_stages=ps.pp * v)
        for c in range(v))
    return chunks


def place(chunks: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to the device and weight dtype; what the family keeps in float32 (e.g. DeepSeek-V3's
    routing selection bias) stays float32."""
    return place_as(chunks, device, dtype, family_of(_first_stage(chunks)).fp32_params)


def place_as(chunks: torch.nn.Module, device: torch.device, dtype: torch.dtype, keep) -> torch.nn.Module:
    """place(), the names of the parameters and buffers kept in float32 given."""
    chunks.to(device=device, dtype=dtype)
    for name, t in [*chunks.named_parameters(), *chunks.named_buffers()]:
        if name.rsplit(".", 1)[-1] in keep:
            t.data = t.data.float()
    return chunks


def _first_stage(chunks: torch.nn.Module) -> torch.nn.Module:
    return chunks[0] if isinstance(chunks, torch.nn.ModuleList) else chunks


@torch.no_grad()
def init_weights(chunks: torch.nn.ModuleList, seed: int, only: Optional[set[str]] = None) -> None:
    """Layout-independent initialisation: each tensor is drawn whole from a generator seeded by
    (seed, its checkpoint name), then sliced, so every layout starts from the same model. What a
    tensor starts as (normal, ones, zeros) is its parameter spec's `init`. only: the local names of
    the tensors to initialise (those a loaded checkpoint lacked), None for all."""
    std = chunks[0].cfg.initializer_range
    for chunk in chunks:
        for spec in chunk.param_slices():
            if only is not None and spec.local_name not in only:
                continue
            pspec = spec_of(spec.param)
            kind = pspec.init_kind(spec.local)
            if kind == "ones":
                spec.local.fill_(1.0)
            elif kind == "zeros":
                spec.local.zero_()
            else:
                # a tied copy (the last stage's embedding under PP) starts equal to its source
                key = pspec.copy_of or spec.key
                # mod 2^64: a generator takes a 64-bit seed (seed x 1,000,003 passes it from ~1.8e13 on)
                g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2 ** 64)
                full = torch.randn(spec.full_shape, generator=g) * std
                if spec.dim is not None:
                    full = full.chunk(spec.parts, dim=spec.dim)[spec.rank]
                spec.local.copy_(full)


def build_model(run: Run) -> torch.nn.ModuleList:
    """This rank's model chunks, initialised layout-independently, on the device in the weight dtype,
    recomputing in backward what train.recompute selects."""
    cfg = run.cfg
    try:
        chunks = build_stages(run.family, cfg, run.ps)
    except (RuntimeError, MemoryError) as e:  # e.g. a model too large for this machine
        if "alloc" not in str(e).lower() and not isinstance(e, (MemoryError, torch.OutOfMemoryError)):
            raise
        raise ConfigError("model", f"this rank's share of the model does not fit in memory "
                          f"({str(e).splitlines()[0]}); check the model sizes, or size a layout with `r1mega plan`"
                          ) from None
    init_weights(chunks, cfg.seed)
    chunks = place_as(chunks, run.device, run.dtype, run.family.fp32_params)
    set_recompute(chunks, cfg.train.recompute, cfg.train.recompute_modules)  # how the finished model trains
    return chunks
