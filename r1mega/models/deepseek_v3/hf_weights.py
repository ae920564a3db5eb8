"""Which slice of which checkpoint tensor each local parameter is, and reading/gathering by it.

One mapping (`param_slices`) serves loading a Hugging Face checkpoint, saving and loading
r1mega's layout-independent checkpoints, and rebuilding full tensors from shards. Every rank
reads only its own slices (safetensors' `get_slice`), for any TP/PP/EP/expert-TP layout.

Names follow the HF checkpoint; they differ only in three places:
  r1mega `X`                            HF `model.X` (lm_head stays `lm_head`)
  `mtp.<L>.*`                           `model.layers.<L>.*` (the official MTP layer index)
  `layers.<L>.mlp.experts.w_gate[e]`    `model.layers.<L>.mlp.experts.<E0+e>.gate_proj.weight`
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open

from r1mega.models.deepseek_v3.fp8 import dequantize, scale_name
from r1mega.errors import CheckpointError  # noqa: F401  (re-exported)
from r1mega.models.deepseek_v3.model import DeepseekV3

EXPERT_PROJ = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}
_EXPERT_RE = re.compile(r"^(.*\.mlp\.experts)\.(w_gate|w_up|w_down)$")


def hf_name(local: str) -> str:
    if local.startswith("lm_head."):
        return local
    if local.startswith("mtp."):
        return "model.layers." + local[len("mtp."):]
    return "model." + local


@dataclass
class SliceSpec:
    """Local tensor `param[index]` is part `rank` of `parts` along `dim` of checkpoint tensor `key`."""

    local_name: str
    param: torch.Tensor
    index: Optional[int]  # expert slot in a stacked expert tensor
    key: str
    full_shape: tuple[int, ...]
    dim: Optional[int]
    rank: int
    parts: int

    @property
    def local(self) -> torch.Tensor:
        return self.param if self.index is None else self.param[self.index]


def _full_shape(shape, dim: Optional[int], parts: int) -> tuple[int, ...]:
    shape = list(shape)
    if dim is not None:
        shape[dim] *= parts
    return tuple(shape)


def local_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            yield name, buf


def param_slices(model: DeepseekV3) -> Iterator[SliceSpec]:
    ps = model.ps
    for name, p in local_tensors(model):
        m = _EXPERT_RE.match(name)
        if m:
            experts = model.get_submodule(name.rsplit(".", 1)[0])
            dim = p.etp_shard_dim - 1  # of the per-expert 2-D weight
            full = _full_shape(p.shape[1:], dim, ps.etp)
            for e in range(p.shape[0]):
                key = f"{hf_name(m.group(1))}.{experts.first_expert + e}.{EXPERT_PROJ[m.group(2)]}.weight"
                yield SliceSpec(name, p, e, key, full, dim, ps.r("etp"), ps.etp)
            continue
        if name.startswith("mtp_embed."):  # the official checkpoint keeps a copy with the MTP layer
            key = f"model.layers.{model.cfg.num_layers}.embed_tokens.weight"
        else:
            key = hf_name(name)
        dim = getattr(p, "tp_shard_dim", None)
        parts = ps.tp if dim is not None else 1
        yield SliceSpec(name, p, None, key, _full_shape(p.shape, dim, parts), dim, ps.r("tp"), parts)


class TensorSource(Protocol):
    def keys(self): ...

    def __contains__(self, key: str) -> bool: ...

    def read(self, key: str, full_shape: tuple[int, ...], dim: Optional[int], rank: int,
             parts: int) -> torch.Tensor: ...


class SafetensorsDir:
    """A Hugging Face checkpoint directory (sharded with an index, or single files)."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                self.where = json.load(f)["weight_map"]
        else:
            files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors")) if os.path.isdir(path) else []
            if not files:
                raise CheckpointError(f"{path}: no *.safetensors files and no model.safetensors.index.json")
            self.where = {}
            for name in files:
                with safe_open(os.path.join(path, name), "pt") as f:
                    for k in f.keys():
                        self.where[k] = name
        self._open: dict[str, object] = {}

    def keys(self):
        return self.where.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def slice(self, key: str):
        if key not in self.where:
            raise CheckpointError(f"{self.path}: tensor {key!r} is missing from the checkpoint")
        name = self.where[key]
        if name not in self._open:
            self._open[name] = safe_open(os.path.join(self.path, name), "pt")
        return self._open[name].get_slice(key)

    def read(self, key, full_shape, dim, rank, parts) -> torch.Tensor:
        sl = self.slice(key)
        shape = tuple(sl.get_shape())
        if shape != tuple(full_shape):
            raise CheckpointError(f"tensor {key!r}: checkpoint shape {shape} != model shape {tuple(full_shape)}")
        if scale_name(key) in self.where:  # DeepSeek FP8: dequantise whole, then slice (block scales)
            return shard(dequantize(sl[:], self.slice(scale_name(key))[:]), dim, rank, parts)
        if dim is None or parts == 1:
            return sl[:]
        n = shape[dim] // parts
        index = [slice(None)] * len(shape)
        index[dim] = slice(rank * n, (rank + 1) * n)
        return sl[tuple(index)]


def shard(t: torch.Tensor, dim: Optional[int], rank: int, parts: int) -> torch.Tensor:
    return t if dim is None or parts == 1 else t.chunk(parts, dim=dim)[rank].contiguous()


@dataclass
class LoadReport:
    read: list[str] = field(default_factory=list)  # checkpoint keys read (this rank's slices)
    kept_init: list[str] = field(default_factory=list)  # local tensors left at their initialisation


@torch.no_grad()
def load_weights(model: DeepseekV3, source: TensorSource, prefix: str = "") -> LoadReport:
    """Fill this rank's shards from `source` (keys optionally under `prefix`).

    A checkpoint saved by `transformers` carries no MTP layer (it drops layer `num_hidden_layers`);
    then the MTP modules keep their initialisation and are listed in `kept_init`. Any other
    missing or misshaped tensor is an error naming it."""
    mtp_prefix = f"{prefix}model.layers.{model.cfg.num_layers}."
    has_mtp = any(k.startswith(mtp_prefix) for k in source.keys())
    report = LoadReport()
    for spec in param_slices(model):
        if not has_mtp and spec.local_name.startswith(("mtp.", "mtp_embed.")):
            if spec.local_name not in report.kept_init:
                report.kept_init.append(spec.local_name)
            continue
        key = prefix + spec.key
        if spec.local_name.startswith("mtp_embed.") and key not in source:
            key = prefix + "model.embed_tokens.weight"
        spec.local.copy_(source.read(key, spec.full_shape, spec.dim, spec.rank, spec.parts))
        report.read.append(key)
    return report


def load_hf_weights(model: DeepseekV3, hf_dir: str) -> LoadReport:
    return load_weights(model, SafetensorsDir(hf_dir))


def _gather(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    if group is None:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


@torch.no_grad()
def gather_full(model: DeepseekV3, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full checkpoint-named tensors (or their gradients) of this pipeline stage, on every rank of
    it. Collective over the stage's TP / EP / expert-TP groups."""
    ps = model.ps
    out: dict[str, torch.Tensor] = {}
    for name, p in local_tensors(model):
        t = p.grad if grads else p
        t = (torch.zeros_like(p) if t is None else t).detach()
        m = _EXPERT_RE.match(name)
        if m:
            t = _gather(_gather(t, p.etp_shard_dim, ps.g("etp")), 0, ps.g("ep"))
            for e in range(t.shape[0]):
                out[f"{hf_name(m.group(1))}.{e}.{EXPERT_PROJ[m.group(2)]}.weight"] = t[e].clone()
            continue
        if getattr(p, "tp_shard_dim", None) is not None:
            t = _gather(t, p.tp_shard_dim, ps.g("tp"))
        key = (f"model.layers.{model.cfg.num_layers}.embed_tokens.weight" if name.startswith("mtp_embed.")
               else hf_name(name))
        out[key] = t.clone()
    return out
