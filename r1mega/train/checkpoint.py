"""Sharded, layout-independent, atomic checkpoints.

    <dir>/step_00000100/rank00003.safetensors   this rank's pieces: model/<key>, exp_avg/<key>, exp_avg_sq/<key>
    <dir>/step_00000100/rank00003.json          for each piece: checkpoint key, full shape, dim, start, length
    <dir>/step_00000100/meta.json               step, optimizer step, data position, config, RNG
    <dir>/latest                                name of the newest complete step directory

Keys are the Hugging Face tensor names (`hf_weights.param_slices`), so a checkpoint saved under one
TP/PP/EP/DP layout loads under any other: each rank assembles exactly the slices it needs from
whichever pieces overlap them. Only one replica of each piece is written (DP rank 0; TP rank 0 for
TP-replicated tensors). "model/" holds the fp32 master weights, so a resumed run continues exactly.
Saving writes into a hidden temporary directory and publishes it by rename, then updates
`latest` by atomic replace: a crash at any point leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from r1mega.models.deepseek_v3.fp8 import dequantize, scale_name
from r1mega.models.deepseek_v3.hf_weights import CheckpointError, load_weights, param_slices, shard
from r1mega.parallel.layout import ParallelState
from r1mega.train.optimizer import DistributedAdamW

STATES = ("exp_avg", "exp_avg_sq")


def _barrier(ps: ParallelState) -> None:
    if ps.world > 1:
        dist.barrier()


def _writes(spec, ps: ParallelState) -> bool:
    """One replica per piece: DP rank 0 (expert-DP for experts), TP rank 0 for TP-replicated ones."""
    p = spec.param
    if getattr(p, "is_mtp_copy", False):
        return False  # the last stage's embedding copy equals the first stage's
    if getattr(p, "is_expert", False):
        return ps.r("edp") == 0
    return ps.r("dp") == 0 and (getattr(p, "tp_shard_dim", None) is not None or ps.r("tp") == 0)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str, step: int, chunks: torch.nn.ModuleList, optimizer: Optional[DistributedAdamW],
                    ps: ParallelState, meta: dict) -> str:
    """Collective. Returns the published step directory. optimizer None: weights only (e.g. GRPO's
    reference policy), from the parameters themselves."""
    name = f"step_{step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".{name}.tmp")
    if ps.rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed save
        os.makedirs(tmp)
    _barrier(ps)
    states = optimizer.full_states() if optimizer is not None else {}  # collective over DP groups
    tensors, pieces = {}, {}
    for c, chunk in enumerate(chunks):
        for spec in param_slices(chunk):
            if not _writes(spec, ps):
                continue
            start = spec.rank * spec.local.shape[spec.dim] if spec.dim is not None else 0
            info = {"shape": list(spec.full_shape), "dim": spec.dim, "start": start,
                    "length": spec.local.shape[spec.dim] if spec.dim is not None else None}
            opt_name = f"{c}.{spec.local_name}"
            master = states[opt_name]["master"] if opt_name in states else spec.param.detach()
            sources = {"model": master}
            sources.update({k: states[opt_name][k] for k in STATES if opt_name in states})
            for kind, full_local in sources.items():
                t = full_local if spec.index is None else full_local[spec.index]
                key = f"{kind}/{spec.key}"
                tensors[key] = t.detach().float().contiguous().cpu()
                pieces[key] = info
    stem = os.path.join(tmp, f"rank{ps.rank:05d}")
    if tensors:
        save_file(tensors, stem + ".safetensors")
        with open(stem + ".json", "w") as f:
            json.dump(pieces, f)
    if ps.rank == 0:
        meta = {**meta, "step": step, "layout": {"tp": ps.tp, "pp": ps.pp, "dp": ps.dp, "ep": ps.ep, "etp": ps.etp}}
        if optimizer is not None:
            meta.update(optimizer_step=optimizer.step_count, skipped_steps=optimizer.skipped)
        torch.save({"torch": torch.get_rng_state()}, os.path.join(tmp, "rng.pt"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    _barrier(ps)
    if ps.rank == 0:
        for entry in os.listdir(tmp):
            with open(os.path.join(tmp, entry), "rb") as f:
                os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        pointer = os.path.join(root, ".latest.tmp")
        with open(pointer, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, os.path.join(root, "latest"))
        _fsync_dir(root)
    _barrier(ps)
    return final


def latest_checkpoint(root: str) -> Optional[str]:
    pointer = os.path.join(root, "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(root, f.read().strip())
    if not os.path.exists(os.path.join(path, "meta.json")):
        raise CheckpointError(f"{pointer} names {path}, which has no meta.json")
    return path


class PieceReader:
    """Assembles any slice of a checkpoint tensor from the pieces that ranks wrote."""

    def __init__(self, path: str, kind: str = "model"):
        self.path, self.kind = path, kind
        self.pieces: dict[str, list[tuple[str, dict]]] = {}
        for entry in sorted(os.listdir(path)):
            if entry.endswith(".json") and entry != "meta.json":
                with open(os.path.join(path, entry)) as f:
                    for key, info in json.load(f).items():
                        self.pieces.setdefault(key, []).append((entry[:-5] + ".safetensors", info))
        self._open: dict[str, object] = {}

    def keys(self):
        return [k.split("/", 1)[1] for k in self.pieces if k.startswith(self.kind + "/")]

    def __contains__(self, key: str) -> bool:
        return f"{self.kind}/{key}" in self.pieces

    def _slice(self, file: str, key: str):
        if file not in self._open:
            self._open[file] = safe_open(os.path.join(self.path, file), "pt")
        return self._open[file].get_slice(key)

    def read(self, key, full_shape, dim, rank, parts) -> torch.Tensor:
        name = f"{self.kind}/{key}"
        if name not in self.pieces:
            raise CheckpointError(f"{self.path}: tensor {key!r} ({self.kind}) is missing from the checkpoint")
        found = self.pieces[name]
        shape = tuple(found[0][1]["shape"])
        if shape != tuple(full_shape):
            raise CheckpointError(f"tensor {key!r}: checkpoint shape {shape} != model shape {tuple(full_shape)}")
        scale = f"{self.kind}/{scale_name(key)}"
        if scale in self.pieces:  # imported with --fp8 keep: dequantise on read
            w = self._slice(found[0][0], name)[:]
            return shard(dequantize(w, self._slice(self.pieces[scale][0][0], scale)[:]), dim, rank, parts)
        axis = dim if dim is not None else next((i["dim"] for _, i in found if i["dim"] is not None), None)
        if axis is None:  # whole tensor wanted, whole tensor stored
            return self._slice(found[0][0], name)[:]
        n = shape[axis] // parts if dim is not None else shape[axis]
        lo, hi = (rank * n, rank * n + n) if dim is not None else (0, n)
        out_shape = list(shape)
        out_shape[axis] = hi - lo
        out = torch.empty(out_shape)
        filled = 0
        for file, info in found:
            p_lo = info["start"] if info["dim"] is not None else 0
            p_hi = p_lo + info["length"] if info["dim"] is not None else shape[axis]
            a, b = max(lo, p_lo), min(hi, p_hi)
            if a >= b:
                continue
            index = [slice(None)] * len(shape)
            index[axis] = slice(a - p_lo, b - p_lo)
            out.narrow(axis, a - lo, b - a).copy_(self._slice(file, name)[tuple(index)])
            filled += b - a
        if filled != hi - lo:
            raise CheckpointError(f"{self.path}: pieces of {key!r} cover {filled} of {hi - lo} rows along dim {axis}")
        return out


@torch.no_grad()
def load_checkpoint(path: str, chunks: torch.nn.ModuleList, optimizer: Optional[DistributedAdamW],
                    ps: ParallelState) -> dict:
    """Load weights (and optimizer states, RNG) saved under any layout. Returns the meta dict.
    A checkpoint without optimizer states leaves the optimizer fresh, starting from the loaded weights."""
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    for chunk in chunks:
        load_weights(chunk, PieceReader(path, "model"))
    if optimizer is not None and "optimizer_step" in meta:  # converted checkpoints hold weights only
        # fp32 master weights come from "model/", not from the (possibly bf16) parameters
        readers = {"master": PieceReader(path, "model"), **{k: PieceReader(path, k) for k in STATES}}
        states: dict[str, dict[str, torch.Tensor]] = {}
        for c, chunk in enumerate(chunks):
            for spec in param_slices(chunk):
                if not spec.param.requires_grad:
                    continue
                entry = states.setdefault(f"{c}.{spec.local_name}",
                                          {k: torch.zeros(spec.param.shape) for k in readers})
                key = spec.key
                if getattr(spec.param, "is_mtp_copy", False) and key not in readers["exp_avg"]:
                    key = "model.embed_tokens.weight"
                for k, reader in readers.items():
                    t = reader.read(key, spec.full_shape, spec.dim, spec.rank, spec.parts)
                    (entry[k] if spec.index is None else entry[k][spec.index]).copy_(t)
        optimizer.load_full_states(states, meta["optimizer_step"])
        optimizer.skipped = meta.get("skipped_steps", 0)
    elif optimizer is not None:  # weights only (converted checkpoint): the optimizer starts from them
        optimizer.reset_from_params()
    rng_file = os.path.join(path, "rng.pt")
    if os.path.exists(rng_file):  # absent in checkpoints made by r1mega-convert
        torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
    return meta
