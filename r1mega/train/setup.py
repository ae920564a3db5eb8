"""The run setup every command shares: join ranks, validate, build the layout, claim the run
directory (the model is built by train/model_build.py). A thin composition of the functions that do
the work, so trainer, grpo and verify-hf start the same way and a rule changed here holds for all of them.

    run = start_run(cfg, kind, validate_training)      # ranks, config checked, layout, family, seed, run dir
    chunks = build_model(run)                          # train/model_build.py
    ... optimizer, resume (each command's own rules), loop ...
    finish_run(run)
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch
import torch.distributed as dist

from r1mega.config import Config, ConfigError
from r1mega.models.family import (ModelFamily, at_family_defaults, family_from_meta, family_of_config,
                                  model_of_checkpoint)
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
    from r1mega.train.checkpoint import checkpoint_meta

    meta = checkpoint_meta(source) if source is not None and at_family_defaults(m) else None
    family = family_of_config(m)
    if meta is None:
        return cfg, family
    saved_family, saved = model_of_checkpoint(meta, m, source, cfg.model_section)
    return replace(cfg, model=saved, student=None), saved_family


def _warn_if_load_differs(own: str, load: str) -> None:
    """A run resumes from its own checkpoint whatever train.load says; say so when train.load is
    another model, which a user changing it on a rerun would otherwise never learn."""
    import sys

    from r1mega.train.checkpoint import checkpoint_meta

    try:
        own_model, load_model = (family_from_meta(checkpoint_meta(p)) for p in (own, load))
    except Exception:  # an unreadable train.load is not used on a resume; the run's own is checked later
        return
    own_arch, load_arch = ((f.name, f.architecture(m)) for f, m in (own_model, load_model))
    if own_arch != load_arch:  # the model itself, not its training keys (e.g. a V3.2 stage's dsa_stage)
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
