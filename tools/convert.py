"""`r1mega-convert` (also `python -m tools.convert`): Hugging Face <-> r1mega checkpoints.

    r1mega-convert import --hf-dir DIR --out CKPT [--fp8 dequant|keep] [--dtype bfloat16]
    r1mega-convert export --ckpt CKPT --out DIR [--fp8-blocks] [--tokenizer-dir DIR]

An r1mega checkpoint is the trainer's layout-independent format (see r1mega/train/checkpoint.py):
whole tensors under their Hugging Face names, split into part files, plus meta.json. Any layout
loads it (`train.load=CKPT`, `verify-hf --ckpt CKPT`).

Streaming: one input shard is open at a time and output parts are flushed at --shard-size, so
peak memory stays near the largest shard, not the model. Before anything is written, the tensor
names, shapes and dtypes are checked against the config (DeepSeek-V3/R1, V2-Lite-style, Qwen2,
Llama); every tensor is checked finite as it streams through. Output goes to a uniquely named
temporary directory beside --out and is renamed into place once complete; an existing --out is
replaced only with --overwrite, and only when an earlier run of this tool wrote it (the ownership
marker it leaves); a directory holding anyone else's files is refused, never removed.
A run killed midway leaves its temporary directory; the next run on that --out removes it (once
its process is gone) and puts back a previous result it had moved aside.
`import --verify` runs verify-hf's logit parity check against transformers on the new checkpoint
(one process) before publishing it. Only safetensors are read.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import uuid
from dataclasses import asdict, replace
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from r1mega.config import ConfigError
from r1mega import output_dir
from r1mega.errors import CheckpointError, OutputError, R1MegaError, debug_requested, run_command
from r1mega.models.family import family_for_hf, family_from_meta
from r1mega.models.hf_config import read_hf_config as shared_read_hf_config
from r1mega.models.fp8 import BLOCK, FP8, dequantize, quantize, scale_name
from r1mega.models.weights import (PieceReader, SafetensorsDir, check_tied_head, crc32, hf_weight_files, read_index,
                                   tied_names)
from r1mega.train.checkpoint import MANIFEST, not_a_checkpoint, read_meta, verify_manifest, write_manifest
from r1mega.data.tokenizer import TOKENIZER_FILES


class ConvertError(R1MegaError):
    """A conversion refused before (or instead of) publishing its output."""


# ---- what the config says the checkpoint must hold -------------------------------------------

def expected_tensors(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape, from the config alone (the family's model built on the meta device)."""
    from r1mega.parallel.layout import single_process_state

    try:
        family, model_cfg = family_for_hf(hf_config)
    except ConfigError as e:
        raise ConvertError(f"config.json: {e}") from None
    with torch.device("meta"):
        model = family.build_stage(model_cfg, single_process_state())
    return {s.key: s.full_shape for s in model.param_slices()}


def optional_tensor(key: str, hf_config: dict) -> bool:
    """Present in real checkpoints but not needed by the model (checked by shape where known):
    FP8 scales, rotary tables, a tied head kept anyway, and what the family says (e.g. MTP copies)."""
    tied_head = key == "lm_head.weight" and hf_config.get("tie_word_embeddings", False)  # some tied checkpoints keep it
    return (key.endswith("_scale_inv") or key.endswith("rotary_emb.inv_freq") or tied_head
            or family_for_hf(hf_config)[0].hf_optional(key, hf_config))


def check(index: dict[str, tuple[tuple[int, ...], str]], hf_config: dict, origin: str) -> None:
    """Every expected tensor present with its shape; nothing unexplained extra. Raises naming them."""
    expected = expected_tensors(hf_config)
    lacking = family_for_hf(hf_config)[0].hf_may_lack(hf_config, index)  # e.g. an MTP layer: initialised
    problems = []
    for key, shape in expected.items():
        if key.startswith(lacking):
            continue
        if key not in index:
            problems.append(f"missing tensor {key} (expected shape {tuple(shape)})")
        elif tuple(index[key][0]) != tuple(shape):
            problems.append(f"tensor {key}: shape {tuple(index[key][0])} in {origin}, {tuple(shape)} from config.json")
    for key, (shape, dtype) in index.items():
        if key not in expected and not optional_tensor(key, hf_config):
            problems.append(f"unexpected tensor {key} {tuple(shape)} {dtype}")
        if dtype not in ("F32", "F16", "BF16", "F8_E4M3"):
            problems.append(f"tensor {key}: unsupported dtype {dtype}")
    problems += _fp8_problems(index)
    quant = hf_config.get("quantization_config")
    block = quant.get("weight_block_size") if isinstance(quant, dict) else None
    if block is not None and list(block) != [BLOCK, BLOCK]:  # the scales would be read on the wrong grid
        problems.append(f"config.json: quantization_config.weight_block_size {block}; r1mega reads FP8 weights in "
                        f"{BLOCK}x{BLOCK} blocks only")
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ConvertError(f"{origin} does not match its config.json:\n  " + "\n  ".join(problems[:20]) + more)


def _fp8_problems(index: dict[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """Each e4m3 tensor with its `_scale_inv` on the 128 x 128 block grid (ragged edges), and each
    scale beside an e4m3 tensor: a scale left out would be read back as unscaled e4m3 values."""
    problems = []
    for key, (shape, dtype) in index.items():
        if dtype == "F8_E4M3":
            scale = scale_name(key)
            grid = tuple(-(-n // BLOCK) for n in shape)
            if len(shape) != 2:
                problems.append(f"FP8 tensor {key} {tuple(shape)}: block scales need a 2-D weight")
            elif scale not in index:
                problems.append(f"FP8 tensor {key} {tuple(shape)} has no {scale} (its {BLOCK}x{BLOCK} block scales)")
            elif tuple(index[scale][0]) != grid:
                problems.append(f"{scale}: shape {tuple(index[scale][0])}, but FP8 tensor {key} {tuple(shape)} in "
                                f"{BLOCK}x{BLOCK} blocks needs {grid}")
        elif key.endswith("_scale_inv") and index.get(key[: -len("_scale_inv")], ((), ""))[1] != "F8_E4M3":
            weight = key[: -len("_scale_inv")]
            held = f"is {index[weight][1]}, not FP8" if weight in index else "is not in the checkpoint"
            problems.append(f"{key}: a block scale, but {weight} {held}")
    return problems


# ---- reading -----------------------------------------------------------------------------------

def read_hf_config(hf_dir: str) -> dict:
    """The directory's config.json (the one reader, r1mega/models/hf_config.py), errors as ConvertError."""
    try:
        return shared_read_hf_config(os.path.join(hf_dir, "config.json"))[0]
    except ConfigError as e:
        if e.message.startswith("cannot read: "):  # a missing or unreadable file: say what --hf-dir must be
            raise ConvertError(f"{e.key}: cannot read ({e.message[len('cannot read: '):]}); --hf-dir must be a "
                               f"Hugging Face model directory") from None
        raise ConvertError(f"{e.key}: {e.message}") from None


def loadable(hf_config: dict) -> None:
    """Refuse, before writing anything, a model that later r1mega commands would refuse to build
    (e.g. routing groups that do not divide the experts): the import would only defer the error."""
    from r1mega.config import build_config, validate

    validate(build_config(family_for_hf(hf_config)[1]), 1)


def hf_files(hf_dir: str) -> dict[str, list[str]]:
    """file -> keys (from the index when there is one), the files transformers reads (hf_weight_files)."""
    index, names = hf_weight_files(hf_dir)
    if index is not None:
        try:
            where = read_index(index)
        except CheckpointError as e:
            raise ConvertError(str(e)) from None
        files: dict[str, list[str]] = {}
        for k, v in where.items():
            files.setdefault(v, []).append(k)
        return files
    if not names:
        raise ConvertError(f"{hf_dir}: no *.safetensors files (only safetensors checkpoints are read)")
    out, seen = {}, {}
    for n in names:
        with _open_safetensors(os.path.join(hf_dir, n)) as f:
            out[n] = list(f.keys())
        for k in out[n]:  # without an index nothing says which copy is meant: refuse to guess
            if k in seen:
                raise ConvertError(f"{hf_dir}: tensor {k} is stored in both {seen[k]} and {n}; remove the stray "
                                   f"file or add a model.safetensors.index.json naming the right one")
            seen[k] = n
    return out


def _open_safetensors(path: str):
    try:
        return safe_open(path, "pt")
    except (SafetensorError, OSError) as e:
        raise ConvertError(f"{path}: unreadable safetensors file ({e}); truncated or corrupt?") from None


def tensor_index(directory: str, files: dict[str, list[str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    index = {}
    for name, keys in files.items():
        with _open_safetensors(os.path.join(directory, name)) as f:
            for k in keys:
                if k not in f.keys():
                    raise ConvertError(f"{os.path.join(directory, name)}: has no tensor {k} (named by the index)")
                sl = f.get_slice(k)
                index[k] = (tuple(sl.get_shape()), sl.get_dtype())
    return index


class PartWriter:
    """Buffers tensors and writes a safetensors part whenever --shard-size is reached."""

    def __init__(self, out: str, stem: str, shard_bytes: int, pieces_json: bool):
        self.out, self.stem, self.limit, self.pieces_json = out, stem, shard_bytes, pieces_json
        self.buf: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[str, list[str]]] = []

    def add(self, key: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.buf and self.size + nbytes > self.limit:
            self.flush()
        self.buf[key] = t.contiguous()
        self.size += nbytes

    def flush(self) -> None:
        if not self.buf:
            return
        name = f"{self.stem}{len(self.parts):05d}"
        file = os.path.join(self.out, name + ".safetensors")
        try:
            save_file(self.buf, file, metadata={"format": "pt"})
        except (OSError, SafetensorError) as e:  # a full disk, a file-size limit: named, the temp dir dropped
            raise ConvertError(f"writing {file} failed ({e}); nothing was published") from None
        if self.pieces_json:  # r1mega checkpoint: whole tensors, no offsets
            with (
                _writing(os.path.join(self.out, name + ".json")),
                open(os.path.join(self.out, name + ".json"), "w") as f,
            ):
                json.dump({k: {"shape": list(v.shape), "dim": None, "start": 0, "length": None, "crc32": crc32(v)}
                           for k, v in self.buf.items()}, f)
        self.parts.append((name + ".safetensors", list(self.buf)))
        self.buf, self.size = {}, 0


_COMMAND = "r1mega-convert"


def _check_out(out: str, overwrite: bool, source: str) -> None:
    """--out may be new or empty; with --overwrite also a directory an earlier r1mega-convert wrote
    (its ownership marker says so). A directory holding anything else is never replaced."""
    a, b = os.path.realpath(out), os.path.realpath(source)
    if a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep):
        raise ConvertError(f"--out {out} overlaps the input {source}; write the result somewhere else")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConvertError(f"--out {out} exists and is not a directory; choose another --out")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if entries and not overwrite:
        raise ConvertError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if entries:
        try:
            marker = output_dir.read_marker(out)
        except OutputError as e:
            raise ConvertError(str(e)) from None
        if marker is None or not marker["command"].startswith(_COMMAND):
            shown = ", ".join(entries[:4]) + (" ..." if len(entries) > 4 else "")
            raise ConvertError(f"--overwrite replaces only a directory r1mega-convert wrote; {out} holds files it "
                               f"did not write ({shown}). Move them away or choose another --out")
        written = marker.get("files")  # what that run published (older markers do not say)
        added = [e for e in entries if isinstance(written, list) and e not in written
                 and e not in (output_dir.MARKER, output_dir.LOCK)]
        if added:
            shown = ", ".join(added[:4]) + (" ..." if len(added) > 4 else "")
            raise ConvertError(f"--overwrite would delete files r1mega-convert did not write in {out} ({shown}); "
                               f"move them away or choose another --out")


def _resolved(out: str) -> str:
    """--out as a symlink to a directory means that directory (its result replaces the target and
    the link keeps pointing at it; renaming onto the link itself fails or replaces the link)."""
    if not os.path.islink(out):
        return out
    target = os.path.realpath(out)
    if not os.path.isdir(target):
        raise ConvertError(f"--out {out} is a symlink to {target}, which is not a directory; give a directory")
    return target


def _sibling(out: str, what: str) -> str:
    """A name beside `out` that nothing uses: this run's own, so it may remove it later."""
    out = os.path.normpath(out)
    while True:
        path = os.path.join(os.path.dirname(out) or ".", f".{os.path.basename(out)}.{what}-{uuid.uuid4().hex[:12]}")
        if not os.path.exists(path):
            return path


_OURS = re.compile(r"^(part\d{5}\.(json|safetensors)|model-\d{5}(-of-\d{5})?\.safetensors|meta\.json|config\.json"
                   r"|model\.safetensors\.index\.json|manifest\.json(\.tmp)?)$")


def _owner_gone(marker: Optional[dict]) -> bool:
    """The r1mega-convert process a marker names ran on this host and is no longer running."""
    if not marker or not marker.get("command", "").startswith(_COMMAND) or not isinstance(marker.get("pid"), int):
        return False  # not provably a run of this tool (older markers name no process)
    if marker.get("host") != socket.gethostname() or marker["pid"] == os.getpid():
        return False
    pid = marker["pid"]
    return not output_dir._alive(pid) or output_dir._start_time(pid) != marker.get("start")


def _marker(path: str) -> Optional[dict]:
    try:
        return output_dir.read_marker(path)
    except OutputError:
        return None


def _only_ours(path: str) -> bool:
    """Every entry is a name this tool writes (nobody added a file of their own)."""
    return all(_OURS.match(e) or e in TOKENIZER_FILES or e in (output_dir.MARKER, output_dir.LOCK)
               for e in os.listdir(path))


def _recover_interrupted(out: str) -> None:
    """Clean up after runs on this --out that were killed: each one's temporary directory (whose
    marker names a process of this host that is gone, and which holds only the tool's files) is
    removed; when one died after moving the previous result aside and before moving its own in,
    the previous result is put back at --out first. A previous result moved aside by a run that
    published and died while deleting it is removed. A live run's directories are left alone."""
    out = os.path.normpath(out)
    parent, base = os.path.dirname(out) or ".", os.path.basename(out)
    left = re.compile(rf"^\.{re.escape(base)}\.(converting|replaced)-([0-9a-f]{{12}})$")
    try:
        found = {(m.group(1), m.group(2)): os.path.join(parent, e) for e in os.listdir(parent)
                 if (m := left.match(e)) and os.path.isdir(os.path.join(parent, e))
                 and not os.path.islink(os.path.join(parent, e))}
    except OSError:
        return
    try:
        for (kind, rid), path in sorted(found.items()):
            if kind != "converting" or not _owner_gone(_marker(path)) or not _only_ours(path):
                continue
            aside = found.pop(("replaced", rid), None)
            if aside is not None and not os.path.lexists(out):
                os.rename(aside, out)
                output_dir._warn(f"{out}: put back the previous result, which an interrupted r1mega-convert had "
                                 f"moved aside to {aside}")
            shutil.rmtree(path)
            output_dir._warn(f"removed {path}, the temporary directory of an interrupted r1mega-convert")
        published = _marker(out) if os.path.isdir(out) else None
        for (kind, rid), path in found.items():
            if kind == "replaced" and published and published.get("tmp_id") == rid and _owner_gone(published):
                shutil.rmtree(path)  # --overwrite's previous result; its run published the new one and died deleting it
                output_dir._warn(f"removed {path}, the result {out} held before an interrupted --overwrite")
    except OSError as e:  # e.g. a read-only directory: the conversion itself says what it cannot do
        output_dir._warn(f"could not clean up after an interrupted r1mega-convert beside {out} "
                         f"({e.strerror or e}: {e.filename}); left as it is")


def _prepare_out(out: str, overwrite: bool, source: str, what: str) -> str:
    _recover_interrupted(out)  # first: a previous result put back is then judged like any --out
    _check_out(out, overwrite, source)
    tmp = _sibling(out, "converting")
    try:
        os.makedirs(tmp)  # fails rather than reuse a directory this run did not make
    except OSError as e:
        raise ConvertError(f"--out {out}: cannot create {tmp} beside it ({e.strerror}); choose another --out") from None
    try:  # who is converting (a rerun removes it once this process is gone) and under which id
        _write_marker(tmp, {"command": f"{_COMMAND} {what}", "source": os.path.abspath(source),
                            "run_id": output_dir.RUN_ID, "pid": os.getpid(), "host": socket.gethostname(),
                            "start": output_dir._start_time(os.getpid()), "tmp_id": tmp.rsplit("-", 1)[1]})
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_named(e, out)
    return tmp


def _write_marker(tmp: str, marker: dict) -> None:
    """Lets a later --overwrite know the directory (and which of its files) is the tool's own."""
    with (
        _writing(os.path.join(tmp, output_dir.MARKER)),
        open(os.path.join(tmp, output_dir.MARKER), "w", encoding="utf-8") as f,
    ):
        json.dump(marker, f, indent=1)


def _publish(tmp: str, out: str, overwrite: bool, source: str) -> None:
    """Replace `out` only once the new directory is complete, and only if it is still what the
    start allowed: a directory that appeared meanwhile, or files added to it, are never replaced."""
    marker = output_dir.read_marker(tmp)
    _write_marker(tmp, {**marker, "files": sorted(e for e in os.listdir(tmp) if e != output_dir.MARKER)})
    _check_out(out, overwrite, source)
    try:
        if os.path.isdir(out) and os.listdir(out):  # --overwrite of an earlier run's own output
            old = tmp.replace(".converting-", ".replaced-")  # the same id: a rerun can tell whose it is
            if os.path.lexists(old):
                old = _sibling(out, "replaced")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)  # put the previous result back
                raise
            try:
                shutil.rmtree(old)  # the previous --out, which --overwrite asked to replace
            except OSError as e:  # the new result is in place: say what is left, not that nothing was replaced
                output_dir._warn(f"{out} was replaced, but removing its previous contents at {old} failed "
                                 f"({e.strerror or e}); delete it yourself")
        else:
            os.rename(tmp, out)  # onto an empty directory too; a non-empty one fails
    except OSError as e:
        raise ConvertError(f"--out {out}: could not move the finished result into place ({e.strerror}); "
                           f"it changed while converting? Nothing was replaced") from None


@contextlib.contextmanager
def _writing(path: str):
    """An OSError while writing `path` (a full disk, a file-size limit) as a ConvertError naming it."""
    try:
        yield
    except OSError as e:
        raise ConvertError(f"writing {path} failed ({e.strerror or e}); nothing was published") from None


def _raise_named(e: BaseException, out: str):
    """Re-raise; an OSError while writing or reading (a full disk, a file-size limit, a read-only
    directory, a file gone) as a ConvertError naming the file, not a traceback."""
    if isinstance(e, OSError):
        raise ConvertError(f"{e.filename or out}: {e.strerror or e}; nothing was published to {out}") from None
    raise e


def _finite(t: torch.Tensor, key: str, where: str) -> None:
    """NaN/Inf in a weight is a damaged checkpoint, never a value to train on."""
    if t.is_floating_point() and not bool(torch.isfinite(t if t.dtype.itemsize > 1 else t.float()).all()):
        raise ConvertError(f"{where}: tensor {key} holds NaN or Inf; the checkpoint is damaged, nothing was written")


def _progress(total_bytes: int, total_tensors: int, what: str) -> tqdm:
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"{what} (0/{total_tensors} tensors)",
                dynamic_ncols=True, disable=None)


# ---- import --------------------------------------------------------------------------------

def do_import(hf_dir: str, out: str, fp8: str = "dequant", dtype: str = "bfloat16",
              shard_bytes: int = 5 * 1024 ** 3, overwrite: bool = False, verify: bool = False,
              verify_tol: float = 1e-4) -> dict:
    out = _resolved(out)
    hf_config = read_hf_config(hf_dir)
    files = hf_files(hf_dir)
    index = tensor_index(hf_dir, files)
    emb, head = tied_names(index) if hf_config.get("tie_word_embeddings") else (None, None)
    if emb is not None:  # a tied model stored with its head alone: the embedding is the head (transformers)
        index[emb] = index[head]
    loadable(hf_config)  # first: the shape check builds the model, which an unsupported setting breaks
    check(index, hf_config, hf_dir)
    try:
        check_tied_head(SafetensorsDir(hf_dir), bool(hf_config.get("tie_word_embeddings", False)))
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    tmp = _prepare_out(out, overwrite, hf_dir, "import")
    try:
        meta = _import_into(tmp, hf_dir, hf_config, files, index, fp8, dtype, shard_bytes, {head: emb} if emb else {})
        if verify:
            _verify(hf_dir, tmp, verify_tol)
        _publish(tmp, out, overwrite, hf_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # this run's own temporary directory
        _raise_named(e, out)
    return meta


def _import_into(tmp: str, hf_dir: str, hf_config: dict, files, index, fp8: str, dtype: str,
                 shard_bytes: int, copies: "dict[str, str] | None" = None) -> dict:
    """copies: stored key -> another name it is also written under (a tied embedding stored as the head)."""
    writer = PartWriter(tmp, "part", shard_bytes, pieces_json=True)
    target = getattr(torch, dtype)
    total = sum(os.path.getsize(os.path.join(hf_dir, n)) for n in files)
    bar, done = _progress(total, len(index), "import"), 0
    scales = {k for k in index if k.endswith("_scale_inv")}
    fp8_count = 0
    for name, keys in files.items():
        with safe_open(os.path.join(hf_dir, name), "pt") as f:
            for key in keys:
                if key in scales and fp8 == "dequant":
                    continue
                t = f.get_tensor(key)
                _finite(t, key, os.path.join(hf_dir, name))
                if t.dtype == FP8:
                    fp8_count += 1
                    if fp8 == "dequant":
                        t = dequantize(t, _scale_for(key, f, os.path.join(hf_dir, name), hf_dir, files),
                                       BLOCK, target)
                writer.add(f"model/{key}", t)
                if key in (copies or {}):
                    writer.add(f"model/{copies[key]}", t.clone())
                done += 1
                bar.set_description(f"import ({done}/{len(index)} tensors)")
        bar.update(os.path.getsize(os.path.join(hf_dir, name)))
    writer.flush()
    bar.close()
    meta = {"kind": "import", "source": os.path.abspath(hf_dir), "hf_config": hf_config, "step": 0,
            "fp8": fp8 if fp8_count else None, "tensors": len(index) - (len(scales) if fp8 == "dequant" else 0)}
    family, model_cfg = family_for_hf(hf_config)
    meta["family"], meta["model_config"] = family.name, asdict(model_cfg)
    meta["manifest"] = MANIFEST  # an edited meta.json or a part swapped in later is refused by name
    with _writing(os.path.join(tmp, "meta.json")), open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    for extra in TOKENIZER_FILES:
        if os.path.exists(os.path.join(hf_dir, extra)):
            with _writing(os.path.join(tmp, extra)):
                shutil.copy(os.path.join(hf_dir, extra), tmp)
    write_manifest(tmp)  # last: it covers the tokenizer files too
    return meta


def _verify(hf_dir: str, ckpt: str, tol: float) -> None:
    """verify-hf's parity check on one process: r1mega on `ckpt` vs transformers on `hf_dir`."""
    from r1mega import verify_hf

    parser = argparse.ArgumentParser()
    verify_hf.add_args(parser)
    args = parser.parse_args(["--hf-dir", hf_dir, "--ckpt", ckpt, "--tol", str(tol), "--seq-length", "16",
                              "--batch-size", "2", "--grad-tol", "-1"])
    if verify_hf.run(args) != 0:
        raise ConvertError(f"--verify: r1mega's logits on the converted checkpoint differ from transformers' on "
                           f"{hf_dir} by more than {tol:g} (see max_abs_logit_diff above); nothing was written")


def _scale_for(key: str, f, file: str, hf_dir: str, files: dict[str, list[str]]) -> torch.Tensor:
    s = scale_name(key)
    if s in f.keys():
        t, where = f.get_tensor(s), file
    else:
        name = next((n for n, keys in files.items() if s in keys), None)  # the scale may sit in another shard
        if name is None:
            raise ConvertError(f"FP8 tensor {key} has no {s}")
        where = os.path.join(hf_dir, name)
        with safe_open(where, "pt") as g:
            t = g.get_tensor(s)
    _finite(t, s, where)  # a NaN/Inf scale would make every weight of its block NaN/Inf
    return t


# ---- export --------------------------------------------------------------------------------

def fp8_quantizable(key: str, t: torch.Tensor, family) -> bool:
    """The linears the family's FP8 checkpoints store in e4m3 (DeepSeek's: every 2-D *_proj weight,
    not embeddings, head, router or norms)."""
    return t.dim() == 2 and family.hf_fp8(key)


def exported_config(meta: dict) -> dict:
    """The config.json of a checkpoint's model: the imported config.json while the model is still the
    one it describes (it keeps what r1mega does not model: token ids, dtype, ...); the family's own
    once training changed the architecture (train.allow_arch_change: e.g. a longer rope), with the
    imported file's other keys carried over; the family's for a model trained from scratch."""
    imported = meta.get("hf_config")
    if imported is not None and not isinstance(meta.get("model_config"), dict):
        return imported  # weights only: nothing else says what the model is
    family, model_cfg = family_from_meta(meta)
    written = family.config_to_hf(model_cfg)
    if imported is None:
        return written
    try:
        imported_family, imported_cfg = family_for_hf(imported)
    except ConfigError:
        imported_family, imported_cfg = None, None
    if imported_family is family:
        training = {k: getattr(model_cfg, k) for k in family.training_keys}
        if replace(imported_cfg, **training) == model_cfg:
            return imported
    rope = ("rope_scaling", "rope_theta", "rope_parameters", "rope_interleave")  # spelled either way: the family's wins
    merged = {**{k: v for k, v in imported.items() if k not in rope}, **written}
    if "rope_parameters" not in imported and {"rope_scaling", "rope_theta"} & imported.keys():
        # spelled as the imported file did (transformers 4's keys, DeepSeek's own config.json): what reads only
        # those (older transformers, serving engines) would otherwise run the default rope without a word
        params = dict(merged.pop("rope_parameters"))
        merged["rope_theta"] = params.pop("rope_theta")
        merged["rope_scaling"] = None if params.get("rope_type", params.get("type")) == "default" else params
    return merged


def do_export(ckpt: str, out: str, fp8_blocks: bool = False, tokenizer_dir: Optional[str] = None,
              shard_bytes: int = 5 * 1024 ** 3, overwrite: bool = False, hf_config: Optional[dict] = None,
              dtype: Optional[str] = None) -> dict:
    """Checkpoint (converted, or saved by the trainer under any layout: pieces are reassembled one
    tensor at a time) -> Hugging Face directory. dtype None keeps each tensor's stored dtype."""
    if tokenizer_dir is not None and not any(os.path.isfile(os.path.join(tokenizer_dir, n))
                                             for n in ("tokenizer.json", "tokenizer.model")):
        raise ConvertError(f"--tokenizer-dir {tokenizer_dir}: no tokenizer.json or tokenizer.model there")
    out = _resolved(out)
    what = not_a_checkpoint(ckpt) if os.path.isdir(ckpt) else None
    if what:  # a run directory, a checkpoints root, an HF directory: say which checkpoint to give
        raise ConvertError(f"--ckpt {ckpt} {what.replace('train.load=', '--ckpt ')}")
    meta = read_meta(ckpt)
    verify_manifest(ckpt, meta)  # as a resume does: an edited meta.json or another step's rank files are refused
    config = hf_config or exported_config(meta)
    reader = PieceReader(ckpt, "model")
    keys = sorted(reader.keys())
    shapes = {k: (tuple(reader.pieces["model/" + k][0][1]["shape"]), "") for k in keys}
    with_dtypes = {}
    for k in keys:
        with_dtypes[k] = (shapes[k][0], reader.stored_dtype(k))
    check(with_dtypes, config, ckpt)
    tmp = _prepare_out(out, overwrite, ckpt, "export")
    try:
        res = _export_into(tmp, ckpt, meta, config, reader, keys, shapes, with_dtypes, fp8_blocks, tokenizer_dir,
                           shard_bytes, dtype)
        _publish(tmp, out, overwrite, ckpt)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # this run's own temporary directory
        _raise_named(e, out)
    return res


def _copies(family, config: dict, keys: list[str]) -> list[tuple[str, str]]:
    """(name, source) of the copies the family's format repeats (DeepSeek's MTP embedding and head)
    that the checkpoint lacks, for the layers it holds."""
    held = set(keys)
    return [(name, source) for name, source in family.hf_copies(config).items()
            if name not in held and source in held
            and any(k.startswith(name.rsplit(".", 2)[0] + ".") for k in held)]


def _export_into(tmp, ckpt, meta, config, reader, keys, shapes, with_dtypes, fp8_blocks, tokenizer_dir,
                 shard_bytes, dtype) -> dict:
    writer = PartWriter(tmp, "model-", shard_bytes, pieces_json=False)
    target = getattr(torch, dtype) if dtype else None
    total = sum(os.path.getsize(os.path.join(ckpt, n)) for n in os.listdir(ckpt) if n.endswith(".safetensors"))
    bar = _progress(total, len(keys), "export")
    family = family_for_hf(config)[0]  # which linears its FP8 checkpoints store in e4m3
    # an import goes out as it came in; a trained checkpoint holds only the tensors the copies share
    plan = [(key, key) for key in keys] + (_copies(family, config, keys) if meta.get("kind") != "import" else [])
    for done, (key, src) in enumerate(plan, start=1):
        if key.endswith("_scale_inv"):
            continue  # written next to its weight below
        shape = shapes[src][0]
        raw_fp8 = with_dtypes[src][1] == "F8_E4M3"
        if raw_fp8:  # an FP8 weight kept at import goes out as it came in, with its scales
            t, scale = reader.stored(src), reader.stored(scale_name(src))  # checksum- and finiteness-checked
            if key != src:
                t, scale = t.clone(), scale.clone()  # safetensors refuses tensors that share memory
            writer.add(key, t)
            writer.add(scale_name(key), scale)
            bar.update(t.numel() * t.element_size())
            continue
        else:
            t = reader.read(src, shape, None, 0, 1)  # checksum- and finiteness-checked
            if key != src:
                t = t.clone()  # a copy of its own: safetensors refuses tensors that share memory
            if target is not None and t.is_floating_point() and key.rsplit(".", 1)[-1] not in family.fp32_params:
                cast = t.to(target)  # what the family keeps in float32 (DeepSeek's routing bias) stays so
                if not bool(torch.isfinite(cast).all()):  # finite before: values past the new dtype's range
                    raise ConvertError(f"--dtype {dtype}: tensor {key} holds values beyond {dtype}'s range (largest "
                                       f"|value| {t.abs().max().item():g}, at most {torch.finfo(target).max:g}); "
                                       f"export in a wider dtype (bfloat16 or float32); nothing was written")
                t = cast
        if fp8_blocks and fp8_quantizable(key, t, family):
            q, s = quantize(t)
            writer.add(key, q)
            writer.add(scale_name(key), s)
        else:
            writer.add(key, t)
        bar.update(t.numel() * t.element_size())
        bar.set_description(f"export ({done}/{len(plan)} tensors)")
    writer.flush()
    bar.close()
    n = len(writer.parts)
    weight_map, renamed = {}, []
    for i, (name, keys) in enumerate(writer.parts):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.rename(os.path.join(tmp, name), os.path.join(tmp, final))
        renamed.append(final)
        weight_map.update({k: final for k in keys})
    total_size = sum(os.path.getsize(os.path.join(tmp, r)) for r in renamed)
    with (
        _writing(os.path.join(tmp, "model.safetensors.index.json")),
        open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f,
    ):
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=1)
    config = dict(config)
    if fp8_blocks:
        config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                         "weight_block_size": [BLOCK, BLOCK]}
    elif meta.get("fp8") != "keep":
        config.pop("quantization_config", None)
    with _writing(os.path.join(tmp, "config.json")), open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for src in (tokenizer_dir, ckpt, meta.get("source")):
        if src and os.path.isdir(src):
            for extra in TOKENIZER_FILES:
                if tokenizer_dir and src != tokenizer_dir and extra != "generation_config.json":
                    continue  # --tokenizer-dir's tokenizer alone: never mixed with another's files
                if os.path.exists(os.path.join(src, extra)) and not os.path.exists(os.path.join(tmp, extra)):
                    with _writing(os.path.join(tmp, extra)):
                        shutil.copy(os.path.join(src, extra), tmp)
    return {"tensors": len(weight_map), "files": n}


def hf_config_from(m) -> dict:
    """A transformers config.json for a model trained from scratch (either family's config)."""
    return m.to_hf()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="r1mega-convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face directory -> r1mega checkpoint")
    imp.add_argument("--hf-dir", required=True)
    imp.add_argument("--out", required=True)
    imp.add_argument("--fp8", choices=["dequant", "keep"], default="dequant",
                     help="FP8 block-scaled weights: dequantize exactly, or keep FP8 with their scales")
    imp.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="of dequantized weights")
    exp = sub.add_parser("export", help="r1mega checkpoint -> Hugging Face directory")
    exp.add_argument("--ckpt", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--fp8-blocks", action="store_true", help="quantize linears to e4m3 with 128x128 block scales")
    exp.add_argument("--tokenizer-dir", default=None)
    exp.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                     help="cast weights (default: as stored; trainer checkpoints store float32)")
    imp.add_argument("--verify", action="store_true",
                     help="before publishing, compare r1mega's logits on the new checkpoint with transformers' "
                          "on --hf-dir (verify-hf, one process)")
    imp.add_argument("--verify-tol", type=float, default=None,
                     help="max |logit diff| for --verify (default 1e-4 for float32, 2e-2 for bfloat16)")
    for q in (imp, exp):
        q.add_argument("--shard-size", type=float, default=5.0, help="GiB per output file")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out once done")
        q.add_argument("--debug", action="store_true", help="show tracebacks of user errors (also R1MEGA_DEBUG=1)")
    args = p.parse_args(argv)

    def body() -> int:
        if not (0 < args.shard_size < float("inf")):
            raise ConvertError(f"--shard-size must be a positive number of GiB, got {args.shard_size}")
        shard = max(1, int(args.shard_size * 1024 ** 3))
        if args.command == "import":
            tol = args.verify_tol if args.verify_tol is not None else (1e-4 if args.dtype == "float32" else 2e-2)
            meta = do_import(args.hf_dir, args.out, args.fp8, args.dtype, shard, args.overwrite, args.verify, tol)
            print(f"imported {meta['tensors']} tensors -> {args.out}")
        else:
            res = do_export(args.ckpt, args.out, args.fp8_blocks, args.tokenizer_dir, shard, args.overwrite,
                            dtype=args.dtype)
            print(f"exported {res['tensors']} tensors in {res['files']} files -> {args.out}")
        return 0

    return run_command(body, args.debug or debug_requested())


if __name__ == "__main__":
    sys.exit(main())
