"""DeepSeek-V3's checkpoint names: which slice of which HF tensor each local parameter is.

The generic reading, loading and gathering lives in `r1mega.models.weights`; names follow the HF
checkpoint and differ only in three places:
  r1mega `X`                            HF `model.X` (lm_head stays `lm_head`)
  `mtp.<L>.*`                           `model.layers.<L>.*` (the official MTP layer index)
  `layers.<L>.mlp.experts.w_gate_up[e]` `model.layers.<L>.mlp.experts.<E0+e>.gate_proj.weight` (first
                                        half of dim 1) and `...up_proj.weight` (second half)
  `layers.<L>.mlp.experts.w_down[e]`    `model.layers.<L>.mlp.experts.<E0+e>.down_proj.weight`
"""
from __future__ import annotations

import re
from typing import Iterator, Optional

import torch
import torch.nn as nn

from r1mega.models.weights import (  # noqa: F401  (re-exported for existing callers)
    CheckpointError, LoadReport, SafetensorsDir, SliceSpec, TensorSource, full_shape, gather, load_hf_weights,
    load_weights, shard,
)
from r1mega.parallel.param_spec import spec_of

# the HF tensors stacked in each local expert weight, in order along the expert-TP shard dim
EXPERT_PROJ = {"w_gate_up": ("gate_proj", "up_proj"), "w_down": ("down_proj",)}
_EXPERT_RE = re.compile(r"^(.*\.mlp\.experts)\.(w_gate_up|w_down)$")


def _expert_parts(t: torch.Tensor, projs: tuple[str, ...], dim: int):
    """(HF projection name, index into the stacked [E, ...] tensor giving its [E, out, in] part)."""
    size = t.shape[dim] // len(projs)
    for j, proj in enumerate(projs):
        index = [slice(None)] * t.dim()
        index[dim] = slice(j * size, (j + 1) * size)
        yield proj, tuple(index)


def hf_name(local: str) -> str:
    if local.startswith("lm_head."):
        return local
    if local.startswith("mtp."):
        return "model.layers." + local[len("mtp."):]
    return "model." + local


def local_tensors(model: nn.Module):
    yield from model.named_parameters()
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            yield name, buf


def _mtp_layer_prefix(name: str, num_layers: int):
    """The HF prefix of the MTP layer a local tensor belongs to (a checkpoint may lack that layer
    whole: transformers saves none), None for the main model's. The embedding copy goes with the first."""
    if name.startswith("mtp_embed."):
        return f"model.layers.{num_layers}."
    if name.startswith("mtp."):
        return f"model.layers.{name.split('.')[1]}."
    return None


def expert_slices(model, name: str, p: torch.Tensor, optional: Optional[str] = None) -> Optional[list[SliceSpec]]:
    """The checkpoint slices of a stacked expert weight (`...mlp.experts.w_gate_up` or `w_down`): one
    per local expert and HF projection; None for any other tensor. Qwen3-MoE's experts are these too."""
    m = _EXPERT_RE.match(name)
    if m is None:
        return None
    ps, spec = model.ps, spec_of(p)
    experts = model.get_submodule(name.rsplit(".", 1)[0])
    dim = spec.etp_shard_dim - 1  # of the per-expert 2-D weight
    out = []
    for proj, part in _expert_parts(p, EXPERT_PROJ[m.group(2)], spec.etp_shard_dim):
        full = full_shape(p[part].shape[1:], dim, ps.etp)
        for e in range(p.shape[0]):
            key = f"{hf_name(m.group(1))}.{experts.first_expert + e}.{proj}.weight"
            out.append(SliceSpec(name, p, (e, *part[1:]), key, full, dim, ps.r("etp"), ps.etp, "etp", None, optional))
    return out


def param_slices(model) -> Iterator[SliceSpec]:
    ps = model.ps
    for name, p in local_tensors(model):
        spec = spec_of(p)
        optional = _mtp_layer_prefix(name, model.cfg.num_layers)
        experts = expert_slices(model, name, p, optional)
        if experts is not None:
            yield from experts
            continue
        if name.startswith("mtp_embed."):  # the official checkpoint keeps a copy with the MTP layer
            key = f"model.layers.{model.cfg.num_layers}.embed_tokens.weight"
        else:
            key = hf_name(name)
        dim = spec.tp_shard_dim
        parts = ps.tp if dim is not None else 1
        yield SliceSpec(name, p, None, key, full_shape(p.shape, dim, parts), dim, ps.r("tp"), parts, "tp",
                        spec.copy_of, optional)


@torch.no_grad()
def gather_full(model, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full checkpoint-named tensors (or their gradients) of this pipeline stage, on every rank of
    it. Collective over the stage's TP / EP / expert-TP groups."""
    ps = model.ps
    out: dict[str, torch.Tensor] = {}
    for name, p in local_tensors(model):
        t = p.grad if grads else p
        t = (torch.zeros_like(p) if t is None else t).detach()
        spec = spec_of(p)
        m = _EXPERT_RE.match(name)
        if m:
            for proj, part in _expert_parts(t, EXPERT_PROJ[m.group(2)], spec.etp_shard_dim):
                whole = gather(gather(t[part], spec.etp_shard_dim, ps.g("etp")), 0, ps.g("ep"))
                for e in range(whole.shape[0]):
                    out[f"{hf_name(m.group(1))}.{e}.{proj}.weight"] = whole[e].clone()
            continue
        if spec.tp_shard_dim is not None:
            t = gather(t, spec.tp_shard_dim, ps.g("tp"))
        key = (f"model.layers.{model.cfg.num_layers}.embed_tokens.weight" if name.startswith("mtp_embed.")
               else hf_name(name))
        out[key] = t.clone()
    return out
