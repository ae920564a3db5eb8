"""Hugging Face <-> sharded r1mega tensors for DeepSeek-V3/V2.

Loading: every rank reads only its own slices from the safetensors files (safetensors'
`get_slice`), for any TP/PP/EP/expert-TP layout. Gathering: the inverse, full HF-named tensors
rebuilt from the shards of one pipeline stage (used by tests, export and layout-free checkpoints).

Names differ from the checkpoint only in three places:
  r1mega `X`                            HF `model.X` (lm_head stays `lm_head`)
  `mtp.<L>.*`                           `model.layers.<L>.*` (the official MTP layer index)
  `layers.<L>.mlp.experts.w_gate[e]`    `model.layers.<L>.mlp.experts.<E0+e>.gate_proj.weight`
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open

from r1mega.models.deepseek_v3.model import DeepseekV3
from r1mega.parallel.layout import ParallelState

EXPERT_PROJ = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}
_EXPERT_RE = re.compile(r"^(.*\.mlp\.experts)\.(w_gate|w_up|w_down)$")


def hf_name(local: str) -> str:
    if local.startswith("lm_head."):
        return local
    if local.startswith("mtp."):
        return "model.layers." + local[len("mtp."):]
    return "model." + local


class CheckpointError(ValueError):
    pass


class SafetensorsDir:
    """Key -> file index over a Hugging Face checkpoint directory; opens files lazily."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                self.where = json.load(f)["weight_map"]
        else:
            files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
            if not files:
                raise CheckpointError(f"{path}: no *.safetensors files and no model.safetensors.index.json")
            self.where = {}
            for name in files:
                with safe_open(os.path.join(path, name), "pt") as f:
                    for k in f.keys():
                        self.where[k] = name
        self._open: dict[str, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def slice(self, key: str):
        if key not in self.where:
            raise CheckpointError(f"{self.path}: tensor {key!r} is missing from the checkpoint")
        name = self.where[key]
        if name not in self._open:
            self._open[name] = safe_open(os.path.join(self.path, name), "pt")
        return self._open[name].get_slice(key)


def _read(ckpt: SafetensorsDir, key: str, full_shape: tuple[int, ...], dim: Optional[int],
          rank: int, parts: int) -> torch.Tensor:
    """Read this rank's 1/parts of `key` along `dim` (whole tensor when dim is None)."""
    sl = ckpt.slice(key)
    shape = tuple(sl.get_shape())
    if shape != tuple(full_shape):
        raise CheckpointError(f"tensor {key!r}: checkpoint shape {shape} != model shape {tuple(full_shape)}")
    if dim is None or parts == 1:
        return sl[:]
    n = shape[dim] // parts
    index = [slice(None)] * len(shape)
    index[dim] = slice(rank * n, (rank + 1) * n)
    return sl[tuple(index)]


def _full_shape(p: torch.Tensor, dim: Optional[int], parts: int) -> tuple[int, ...]:
    shape = list(p.shape)
    if dim is not None:
        shape[dim] *= parts
    return tuple(shape)


def _local_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            yield name, buf


@dataclass
class LoadReport:
    read: list[str] = field(default_factory=list)  # HF keys read (this rank's slices)
    kept_init: list[str] = field(default_factory=list)  # local params left at their initialisation


@torch.no_grad()
def load_hf_weights(model: DeepseekV3, hf_dir: str) -> LoadReport:
    """Fill this rank's shards from an HF directory.

    A checkpoint saved by `transformers` carries no MTP layer (it drops layer `num_hidden_layers`);
    then the MTP modules keep their initialisation and are listed in `kept_init`. Any other
    missing or misshaped tensor is an error naming it."""
    ps: ParallelState = model.ps
    ckpt = SafetensorsDir(hf_dir)
    mtp_prefix = f"model.layers.{model.cfg.num_layers}."
    has_mtp = any(k.startswith(mtp_prefix) for k in ckpt.where)
    report = LoadReport()
    read = report.read
    for name, p in _local_tensors(model):
        if not has_mtp and name.startswith(("mtp.", "mtp_embed.")):
            report.kept_init.append(name)
            continue
        m = _EXPERT_RE.match(name)
        if m:
            prefix, which = hf_name(m.group(1)), m.group(2)
            experts = model.get_submodule(name.rsplit(".", 1)[0])
            dim = p.etp_shard_dim - 1  # per-expert 2-D weight
            full = _full_shape(p[0], dim, ps.etp)
            for e in range(p.shape[0]):
                key = f"{prefix}.{experts.first_expert + e}.{EXPERT_PROJ[which]}.weight"
                p[e].copy_(_read(ckpt, key, full, dim, ps.r("etp"), ps.etp))
                read.append(key)
            continue
        if name.startswith("mtp_embed."):
            layer = model.cfg.num_layers  # the official checkpoint stores a copy with the MTP layer
            key = f"model.layers.{layer}.embed_tokens.weight"
            key = key if key in ckpt else "model.embed_tokens.weight"
        else:
            key = hf_name(name)
        dim = getattr(p, "tp_shard_dim", None)
        parts = ps.tp if dim is not None else 1
        p.copy_(_read(ckpt, key, _full_shape(p, dim, parts), dim, ps.r("tp"), parts))
        read.append(key)
    return report


def _gather(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    if group is None:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


@torch.no_grad()
def gather_full(model: DeepseekV3, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full HF-named tensors (or their gradients) of this pipeline stage, on every rank of it.
    Collective over the stage's TP / EP / expert-TP groups."""
    ps: ParallelState = model.ps
    out: dict[str, torch.Tensor] = {}
    for name, p in _local_tensors(model):
        t = p.grad if grads else p
        if grads and t is None:
            t = torch.zeros_like(p)
        t = t.detach()
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
