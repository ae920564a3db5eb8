"""Which slice of which checkpoint tensor each local parameter is, and reading/gathering by it,
for any model family.

A family's stage module yields `SliceSpec`s (`stage.param_slices()`); one mapping then serves
loading a Hugging Face checkpoint, saving and loading r1mega's layout-independent checkpoints,
initialisation, and rebuilding full tensors from shards. The two `TensorSource`s read a slice of a
stored tensor: `SafetensorsDir` (a Hugging Face directory) and `PieceReader` (an r1mega checkpoint's
rank pieces, checksummed; train/checkpoint.py writes them). Every rank reads only its own slices
(safetensors' `get_slice`), for any TP/PP/EP/expert-TP layout. Checkpoint keys are the Hugging
Face names (`hf_name`): r1mega `X` is HF `model.X`, `lm_head` stays `lm_head`.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Optional, Protocol, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from r1mega.errors import CheckpointError
from r1mega.models.fp8 import dequantize, scale_name


def hf_name(local: str) -> str:
    return local if local.startswith("lm_head.") else "model." + local


@dataclass
class SliceSpec:
    """Local tensor `param[index]` is part `rank` of `parts` along `dim` of checkpoint tensor `key`."""

    local_name: str
    param: torch.Tensor
    index: Optional[Union[int, tuple]]  # expert slot (and part) in a stacked expert tensor: param[index]
    key: str
    full_shape: tuple[int, ...]
    dim: Optional[int]
    rank: int
    parts: int
    group: Optional[str] = None  # the parallel group the parts are spread over ("tp", "etp")
    fallback: Optional[str] = None  # key to read when `key` is absent (a tied copy's source)
    # the tensor keeps its initialisation when the checkpoint has nothing under this prefix
    # (DeepSeek's MTP layer, which transformers' checkpoints drop)
    optional_prefix: Optional[str] = None

    @property
    def local(self) -> torch.Tensor:
        return self.param if self.index is None else self.param[self.index]


def full_shape(shape, dim: Optional[int], parts: int) -> tuple[int, ...]:
    shape = list(shape)
    if dim is not None:
        shape[dim] *= parts
    return tuple(shape)


class TensorSource(Protocol):
    def keys(self): ...

    def __contains__(self, key: str) -> bool: ...

    def read(self, key: str, full_shape: tuple[int, ...], dim: Optional[int], rank: int,
             parts: int) -> torch.Tensor: ...


def read_index(file: str) -> dict[str, str]:
    """The weight_map of a model.safetensors.index.json (tensor name -> file name in the same
    directory), or a CheckpointError naming the file and what is wrong with it."""
    try:
        with open(file, encoding="utf-8") as f:
            where = json.load(f)["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file}: not a safetensors index (JSON with a 'weight_map'): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(where, dict):
        raise CheckpointError(f"{file}: 'weight_map' must map tensor names to file names, got {type(where).__name__}")
    for key, name in where.items():
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
            raise CheckpointError(f"{file}: weight_map[{key!r}] must be a file name in the same directory, "
                                  f"got {name!r}")
    return where


SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
EMBEDDING, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def tied_names(keys) -> tuple[Optional[str], Optional[str]]:
    """(embedding, head) names when a tied model's checkpoint stores the head but not the embedding
    (transformers fills the tied embedding from the head), else (None, None)."""
    return (EMBEDDING, HEAD) if EMBEDDING not in keys and HEAD in keys else (None, None)


def hf_weight_files(path: str) -> tuple[Optional[str], list[str]]:
    """(index file or None, safetensors file names) of a Hugging Face directory, as transformers picks
    them: model.safetensors alone when it is there (an index beside it is stale: save_pretrained
    unsharded over a sharded save leaves the old index), else the index, else every *.safetensors file."""
    if os.path.isfile(os.path.join(path, SINGLE_FILE)):
        return None, [SINGLE_FILE]
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        return index, []
    return None, sorted(n for n in os.listdir(path) if n.endswith(".safetensors")) if os.path.isdir(path) else []


def _check_block_size(path: str) -> None:
    """FP8 scales are read on 128 x 128 blocks (models/fp8.py): another block size in config.json
    would be misread, so it is named instead."""
    from r1mega.models.fp8 import BLOCK

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            quant = json.load(f).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return  # the config's own reader names what is wrong with it
    block = quant.get("weight_block_size") if isinstance(quant, dict) else None
    if block is not None and list(block) != [BLOCK, BLOCK]:
        raise CheckpointError(f"{os.path.join(path, 'config.json')}: quantization_config.weight_block_size {block}; "
                              f"r1mega reads FP8 weights in {BLOCK}x{BLOCK} blocks only")


class SafetensorsDir:
    """A Hugging Face checkpoint directory (sharded with an index, or single files)."""

    def __init__(self, path: str):
        self.path = path
        index, files = hf_weight_files(path)
        if index is not None:
            self.where = read_index(index)
        else:
            if not files:
                raise CheckpointError(f"{path}: no *.safetensors files and no model.safetensors.index.json")
            self.where = {}
            for name in files:
                with safe_open(os.path.join(path, name), "pt") as f:
                    for k in f.keys():
                        self.where[k] = name
        if any(k.endswith("_scale_inv") for k in self.where):
            _check_block_size(path)
        self._open: dict[str, object] = {}
        self.alias: dict[str, str] = {}  # a key read as another stored tensor (tie_embedding_to_head)

    def tie_embedding_to_head(self) -> None:
        """A tied model stored with its head alone (no embedding): transformers loads the head's values
        into the tied embedding, so the embedding reads the stored head."""
        emb, head = tied_names(self.where)
        if emb is not None:
            self.alias[emb] = head
            self.where[emb] = self.where[head]

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
        return self._open[name].get_slice(self.alias.get(key, key))

    def read(self, key, full_shape, dim, rank, parts) -> torch.Tensor:
        sl = self.slice(key)
        shape = tuple(sl.get_shape())
        if shape != tuple(full_shape):
            raise CheckpointError(f"tensor {key!r}: checkpoint shape {shape} != model shape {tuple(full_shape)}")
        if scale_name(key) in self.where:  # DeepSeek FP8: dequantise whole, then slice (block scales)
            return shard(dequantize(sl[:], self.slice(scale_name(key))[:], name=f"{self.path}: tensor {key}"),
                         dim, rank, parts)
        if dim is None or parts == 1:
            return sl[:]
        n = shape[dim] // parts
        index = [slice(None)] * len(shape)
        index[dim] = slice(rank * n, (rank + 1) * n)
        return sl[tuple(index)]


def shard(t: torch.Tensor, dim: Optional[int], rank: int, parts: int) -> torch.Tensor:
    return t if dim is None or parts == 1 else t.chunk(parts, dim=dim)[rank].contiguous()


def crc32(t: torch.Tensor) -> int:
    """CRC32 of a tensor's raw bytes (what safetensors stores), any dtype."""
    raw = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(raw)


def non_finite(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dtype.itemsize > 1 and not bool(torch.isfinite(t).all())


class PieceReader:
    """Assembles any slice of a checkpoint tensor from the pieces that ranks wrote. Every result is
    checked finite and, with `verify`, each piece read is checked (once) against its recorded CRC32;
    an unreadable file, a mismatch or NaN/Inf is a CheckpointError naming the file and tensor."""

    def __init__(self, path: str, kind: str = "model", verify: bool = True):
        self.path, self.kind, self.verify = path, kind, verify
        self.pieces: dict[str, list[tuple[str, dict]]] = {}
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: no such checkpoint directory")
        entries = sorted(os.listdir(path))
        for entry in entries:
            # a piece listing sits beside its safetensors file (tokenizer files etc. may sit there too)
            if entry.endswith(".json") and entry[:-5] + ".safetensors" in entries:
                file = os.path.join(path, entry)
                try:
                    with open(file) as f:
                        listing = json.load(f)
                    for key, info in listing.items():
                        if not {"shape", "dim", "start", "length"} <= set(info):
                            raise KeyError(key)
                        self.pieces.setdefault(key, []).append((entry[:-5] + ".safetensors", info))
                except json.JSONDecodeError as e:
                    raise CheckpointError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
                except (AttributeError, KeyError, TypeError):
                    raise CheckpointError(f"{file}: not a piece listing (key -> shape, dim, start, length)") from None
        self._open: dict[str, object] = {}
        self._verified: set[tuple[str, str]] = set()

    def keys(self):
        return [k.split("/", 1)[1] for k in self.pieces if k.startswith(self.kind + "/")]

    def __contains__(self, key: str) -> bool:
        return f"{self.kind}/{key}" in self.pieces

    def _file(self, file: str):
        if file not in self._open:
            try:
                self._open[file] = safe_open(os.path.join(self.path, file), "pt")
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{os.path.join(self.path, file)}: unreadable ({e}); "
                                      f"truncated or corrupt") from None
        return self._open[file]

    def _slice(self, file: str, key: str):
        where = os.path.join(self.path, file)
        info = next((i for f, i in self.pieces.get(key, []) if f == file), {})
        try:
            if self.verify and "crc32" in info and (file, key) not in self._verified:
                whole = self._file(file).get_tensor(key)
                if crc32(whole) != info["crc32"]:
                    raise CheckpointError(f"{where}: tensor {key!r} fails its checksum (crc32 {crc32(whole):08x}, "
                                          f"recorded {info['crc32']:08x}); the file is corrupt")
                self._verified.add((file, key))
            return self._file(file).get_slice(key)
        except SafetensorError as e:
            raise CheckpointError(f"{where}: tensor {key!r} unreadable ({e}); truncated or corrupt") from None

    def stored_dtype(self, key: str) -> str:
        """The safetensors dtype ("F32", "BF16", "F8_E4M3", ...) of a tensor's first piece."""
        file = self.pieces[f"{self.kind}/{key}"][0][0]
        try:
            return self._file(file).get_slice(f"{self.kind}/{key}").get_dtype()
        except SafetensorError as e:
            raise CheckpointError(f"{os.path.join(self.path, file)}: tensor {self.kind}/{key} unreadable ({e}); "
                                  f"truncated or corrupt") from None

    def stored(self, key: str) -> torch.Tensor:
        """A tensor as stored, in its stored dtype (an FP8 weight kept at import stays e4m3, its
        scale float32), checksum- and finiteness-checked like read(): for copying it out unchanged."""
        name = f"{self.kind}/{key}"
        if name not in self.pieces:
            raise CheckpointError(f"{self.path}: tensor {key!r} ({self.kind}) is missing from the checkpoint")
        found = self.pieces[name]
        if len(found) != 1 or found[0][1]["dim"] is not None:  # sharded pieces: assemble with read()
            raise CheckpointError(f"{self.path}: tensor {key!r} is stored in {len(found)} pieces; expected one whole")
        t = self._slice(found[0][0], name)[:]
        return self._finite(t, key, [found[0][0]])

    def _finite(self, t: torch.Tensor, key: str, files) -> torch.Tensor:
        if non_finite(t):  # always: cheap, and NaN weights are never worth training on
            names = ", ".join(sorted({os.path.join(self.path, f) for f in files}))
            raise CheckpointError(f"{names}: tensor {self.kind}/{key} holds NaN or Inf")
        return t

    def read(self, key, full_shape, dim, rank, parts) -> torch.Tensor:
        t = self._read(key, full_shape, dim, rank, parts)
        return self._finite(t, key, [f for f, _ in self.pieces[f"{self.kind}/{key}"]])

    def _read(self, key, full_shape, dim, rank, parts) -> torch.Tensor:
        name = f"{self.kind}/{key}"
        if name not in self.pieces:
            raise CheckpointError(f"{self.path}: tensor {key!r} ({self.kind}) is missing from the checkpoint")
        found = self.pieces[name]
        shape = tuple(found[0][1]["shape"])
        if shape != tuple(full_shape):
            raise CheckpointError(f"{self.path}: tensor {key!r}: checkpoint shape {shape} != model shape "
                                  f"{tuple(full_shape)}")
        scale = f"{self.kind}/{scale_name(key)}"
        if scale in self.pieces:  # imported with --fp8 keep: dequantise on read
            w = self._slice(found[0][0], name)[:]
            scale_inv = self._slice(self.pieces[scale][0][0], scale)[:]
            return shard(dequantize(w, scale_inv, name=f"{self.path}: tensor {key}"), dim, rank, parts)
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


@dataclass
class LoadReport:
    read: list[str] = field(default_factory=list)  # checkpoint keys read (this rank's slices)
    kept_init: list[str] = field(default_factory=list)  # local tensors left at their initialisation


@torch.no_grad()
def load_weights(model: nn.Module, source: TensorSource, prefix: str = "") -> LoadReport:
    """Fill this rank's shards of a stage from `source` (keys optionally under `prefix`). A missing
    or misshaped tensor is an error naming it, except those the family marks optional."""
    report = LoadReport()
    present: dict[str, bool] = {}
    for spec in model.param_slices():
        if spec.optional_prefix is not None:
            want = prefix + spec.optional_prefix
            if want not in present:
                present[want] = any(k.startswith(want) for k in source.keys())
            # a tied copy stored with the optional part (DeepSeek's MTP embedding under PP) reads its source
            copied = spec.fallback is not None and prefix + spec.fallback in source
            if not present[want] and not copied:
                if spec.local_name not in report.kept_init:
                    report.kept_init.append(spec.local_name)
                continue
        key = prefix + spec.key
        if spec.fallback is not None and key not in source:
            key = prefix + spec.fallback
        spec.local.copy_(source.read(key, spec.full_shape, spec.dim, spec.rank, spec.parts))
        report.read.append(key)
    return report


def load_hf_weights(model: nn.Module, hf_dir: str) -> LoadReport:
    source = SafetensorsDir(hf_dir)
    try:
        with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
            tied = json.load(f).get("tie_word_embeddings", False)
    except (OSError, ValueError, AttributeError):
        tied = False  # the config's own reader names what is wrong with it
    check_tied_head(source, tied)
    if tied:
        source.tie_embedding_to_head()
    return load_weights(model, source)


def check_tied_head(source: SafetensorsDir, tied: bool, rows_per_read: int = 4096) -> None:
    """A tied model whose checkpoint also stores `lm_head.weight` with other values than the embedding:
    transformers then leaves the two untied (a head of its own) while r1mega's tied model reads the
    embedding as its head, so the two would be different models; refused, saying how to choose.
    Compared a block of rows at a time (no second vocab-sized copy)."""
    head, emb = "lm_head.weight", "model.embed_tokens.weight"
    if not tied or head not in source or emb not in source:
        return
    h, e = source.slice(head), source.slice(emb)
    fix = (f"set tie_word_embeddings to false in {os.path.join(source.path, 'config.json')} to use the stored "
           f"head (as transformers does), or remove {head} from the checkpoint to tie the head to the embedding")
    if tuple(h.get_shape()) != tuple(e.get_shape()):
        raise CheckpointError(f"{source.path}: tie_word_embeddings is true but {head} {tuple(h.get_shape())} and "
                              f"{emb} {tuple(e.get_shape())} differ in shape; {fix}")
    rows = h.get_shape()[0]
    for start in range(0, rows, rows_per_read):
        a, b = h[start:start + rows_per_read], e[start:start + rows_per_read]
        if not torch.equal(a.float(), b.float()):
            raise CheckpointError(f"{source.path}: tie_word_embeddings is true but the stored {head} differs from "
                                  f"{emb} (from row {start}); transformers then keeps the two untied, so r1mega's "
                                  f"tied model would not be the model transformers loads; {fix}")


def gather(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    if group is None:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


@torch.no_grad()
def gather_sharded(model: nn.Module, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full checkpoint-named tensors (or gradients) of a stage without stacked experts, on every
    rank of it. Collective over the groups the slices are spread over."""
    out: dict[str, torch.Tensor] = {}
    for spec in model.param_slices():
        if spec.index is not None:
            raise ValueError(f"{spec.local_name}: stacked expert tensors need the family's own gather")
        t = spec.param.grad if grads else spec.param
        t = (torch.zeros_like(spec.param) if t is None else t).detach()
        if spec.dim is not None and spec.parts > 1:
            t = gather(t, spec.dim, model.ps.g(spec.group))
        out[spec.key] = t.clone()
    return out
