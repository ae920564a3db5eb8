"""Building this rank's model: the family's stage modules for each virtual pipeline chunk,
layout-independent initial weights, and placement on the device in the weight dtype (`build_model`
does all three for a started run)."""
from __future__ import annotations

import os
import zlib
from dataclasses import replace
from typing import Optional

import torch

from r1mega.config import Config, ConfigError
from r1mega.models.family import family_for, family_of
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import spec_of
from r1mega.parallel.recompute import set_recompute
from r1mega.train.setup import Run


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
    """This rank's model chunks (one per virtual pipeline stage) of the config's model family."""
    return build_stages(family_for(cfg)[0], cfg, ps)


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
    set_recompute(chunks, cfg.train.recompute, cfg.train.recompute_modules)
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
    """This rank's model chunks, initialised layout-independently, on the device in the weight dtype."""
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
    return place_as(chunks, run.device, run.dtype, run.family.fp32_params)
