"""Sharded, layout-independent, atomic checkpoints.

    <dir>/step_00000100/rank00003.safetensors   this rank's pieces: model/<key>, exp_avg/<key>, exp_avg_sq/<key>
    <dir>/step_00000100/rank00003.json          for each piece: checkpoint key, full shape, dim, start, length, crc32
    <dir>/step_00000100/meta.json               step, optimizer step, data position, model config, last loss
    <dir>/step_00000100/rng.pt                  torch RNG state
    <dir>/step_00000100/tokenizer.json, ...     the run's tokenizer files (when it has an HF tokenizer)
    <dir>/step_00000100/manifest.json           written last: sha256 of meta.json, rng.pt, the tokenizer
                                                files, every piece listing and safetensors header, and one
                                                digest over all
    <dir>/latest                                name of the newest complete step directory

Keys are the Hugging Face tensor names (each stage's `param_slices()`, see `r1mega.models.weights`),
so a checkpoint saved under one TP/PP/EP/DP layout loads under any other: each rank assembles
exactly the slices it needs from whichever pieces overlap them. Only one replica of each piece is
written (DP rank 0; TP rank 0 for TP-replicated tensors). "model/" holds the fp32 master weights,
so a resumed run continues exactly.
Saving writes into a hidden temporary directory and publishes it by rename, then updates
`latest` by atomic replace: a crash at any point leaves the previous checkpoint loadable.

Nothing is lost, nothing is silent: every stored piece carries a CRC32 of its bytes, checked when
it is read (train.verify_checkpoint=false skips it, not the manifest), and values are checked finite
on save and on load. The manifest ties the files of one save together: a meta.json edited afterwards (step,
consumed samples, optimizer step) or rank files copied in from another step fail it, naming the
file, and the checkpoint is treated like a damaged piece. Resuming tries the newest checkpoint first and falls back to the previous good one with a
warning naming the bad file. An existing step directory is never overwritten (it is moved aside),
a run whose `latest` is gone while step directories exist is refused, and a resume whose model
config differs from the checkpoint's is refused key by key unless train.allow_arch_change lists it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import shutil
import sys
from dataclasses import asdict
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import save_file

from r1mega.atomic_io import fsync_dir, open_fresh
from r1mega.data.tokenizer import TOKENIZER_FILES, copy_tokenizer_files
from r1mega.errors import CheckpointError, ConfigError
from r1mega.models.weights import PieceReader, crc32, load_weights, non_finite
from r1mega.parallel.layout import ParallelState
from r1mega.parallel.param_spec import spec_of
from r1mega.train.optimizer import DistributedAdamW

STATES = ("exp_avg", "exp_avg_sq")
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
# model keys that do not change the function a checkpoint computes (only how a fresh model is drawn)
NON_ARCH_KEYS = ("initializer_range",)


class ArchitectureMismatch(CheckpointError):
    """The checkpoint was trained with another model config; falling back would not help."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _gather_errors(ps: ParallelState, error: Optional[str]) -> list[str]:
    """Every rank's error (None when fine), on every rank, so all take the same decision."""
    if ps.world == 1:
        return [error] if error else []
    out: list = [None] * ps.world
    dist.all_gather_object(out, error)
    return [e for e in out if e]


def _writes(spec, ps: ParallelState) -> bool:
    """One replica per piece: DP rank 0 (expert-DP for experts), TP rank 0 for TP-replicated ones."""
    p = spec_of(spec.param)
    if p.copy_of is not None:
        return False  # a tied copy (the last stage's embedding) equals the first stage's
    if p.is_expert:
        return ps.r("edp") == 0
    return ps.r("dp_cp") == 0 and (p.tp_shard_dim is not None or ps.r("tp") == 0)


def run_meta(run, kind: str, **extra) -> dict:
    """What a checkpoint records about the run (a train/setup.py Run) besides weights: the meta.json
    that model_from_checkpoint and the resume rules read back."""
    return {"kind": kind, "family": run.family.name, "model_config": asdict(run.cfg.active_model),
            "hf_config": run.hf_config, **extra}


def save_checkpoint(root: str, step: int, chunks: torch.nn.ModuleList, optimizer: Optional[DistributedAdamW],
                    ps: ParallelState, meta: dict, tokenizer: Optional[str] = None) -> str:
    """Collective. Returns the published step directory. Refuses (on every rank) to save non-finite
    values; an existing directory of the same step is moved aside, never overwritten. optimizer
    None: weights only (e.g. GRPO's reference policy), from the parameters themselves. The run's
    tokenizer files (when it has a tokenizer.json) go along, as r1mega-convert import copies them,
    so generate, eval and export work on the checkpoint alone."""
    name = f"step_{step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".{name}.tmp")
    states = optimizer.full_states() if optimizer is not None else {}  # collective over DP groups
    tensors, pieces = {}, {}
    for c, chunk in enumerate(chunks):
        for spec in chunk.param_slices():
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
                pieces[key] = {**info, "crc32": crc32(tensors[key])}
    bad = [k for k, t in tensors.items() if non_finite(t)]
    errors = _gather_errors(ps, f"rank {ps.rank}: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
                            if bad else None)
    if errors:
        raise CheckpointError(f"refusing to save step {step} to {root}: non-finite values in " + "; ".join(errors)
                              + ". The previous checkpoint stays the latest.")
    not_saved = f"step {step} was not saved and {os.path.join(root, 'latest')} still names the previous checkpoint"
    error = None
    if ps.rank == 0:
        try:
            os.makedirs(root, exist_ok=True)
            if os.path.islink(tmp):  # our temporary name: the link goes, never what it points at
                os.unlink(tmp)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed save of this very step
            os.makedirs(tmp)
        except OSError as e:  # e.g. a read-only run directory
            error = f"cannot create {tmp} ({e.strerror})"
    _raise_any(ps, error, not_saved)
    stem = os.path.join(tmp, f"rank{ps.rank:05d}")
    try:
        if tensors:
            save_file(tensors, stem + ".safetensors")
            with open(stem + ".json", "w") as f:
                json.dump(pieces, f)
    except (OSError, SafetensorError) as e:  # e.g. a full disk: only the unpublished directory is affected
        error = f"writing {stem}.safetensors failed ({getattr(e, 'strerror', None) or e})"
    if ps.rank == 0 and error is None:
        meta = {**meta, "step": step, "layout": {"tp": ps.tp, "pp": ps.pp, "dp": ps.dp, "ep": ps.ep, "etp": ps.etp}}
        if optimizer is not None:
            meta.update(optimizer_step=optimizer.step_count, skipped_steps=optimizer.skipped)
        meta["manifest"] = MANIFEST
        try:
            torch.save({"torch": torch.get_rng_state()}, os.path.join(tmp, "rng.pt"))
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f, indent=1)
            if tokenizer is not None:
                copy_tokenizer_files(tokenizer, tmp)
        except OSError as e:
            error = f"writing {tmp}/meta.json failed ({e.strerror})"
    _raise_any(ps, error, not_saved)
    if ps.rank == 0:
        try:
            _publish(root, name, tmp, final)
        except OSError as e:
            error = f"publishing {final} failed ({e.strerror}: {e.filename})"
        except CheckpointError as e:
            error = str(e)
    _raise_any(ps, error, f"step {step} may not be the latest ({os.path.join(root, 'latest')} says which is)")
    return final


def _raise_any(ps: ParallelState, error: Optional[str], consequence: str) -> None:
    """Collective: every rank raises the same CheckpointError when any rank failed (none waits
    for a rank that has left), else returns once all got here."""
    errors = _gather_errors(ps, f"rank {ps.rank}: {error}" if error and ps.world > 1 else error)
    if errors:
        raise CheckpointError("; ".join(errors) + f"; {consequence}")


def _publish(root: str, name: str, tmp: str, final: str) -> None:
    """Rank 0: the manifest, fsync, then rename the finished directory into place and point `latest` at it."""
    write_manifest(tmp)  # last: it covers every file of this save
    for entry in os.listdir(tmp):
        with open(os.path.join(tmp, entry), "rb") as f:
            os.fsync(f.fileno())
    if os.path.exists(final):  # e.g. a corrupt checkpoint this run fell back from: keep it aside
        aside = _unused_name(final + ".replaced")
        os.rename(final, aside)
        _warn(f"{final} existed; moved it to {aside} (delete it yourself once you no longer need it)")
    os.rename(tmp, final)
    pointer = os.path.join(root, ".latest.tmp")
    with open_fresh(pointer) as f:  # a symlink planted at the temporary name is not written through
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(root, "latest"))
    fsync_dir(root)


def _file_digest(path: str) -> str:
    """sha256 of a small file; of a safetensors file only its size and header (the tensors' bytes
    are covered by each piece's CRC32, recorded in the piece listing the manifest covers)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.endswith(".safetensors"):
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            h.update(str(os.path.getsize(path)).encode() + head + f.read(min(n, 100_000_000)))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _manifest_files(path: str, tokenizer: bool = True) -> list[str]:
    """The files a manifest covers; `tokenizer`: with the tokenizer files (manifests before
    TOKENIZER_COVERED did not list them, so a checkpoint saved then is checked without them)."""
    return sorted(e for e in os.listdir(path) if e in ("meta.json", "rng.pt") or STEP_FILE.match(e)
                  or (tokenizer and e in TOKENIZER_FILES))


# manifest key of a save that lists its tokenizer files (generation reads the tokenizer beside the
# weights, so an edited tokenizer.json or chat template would change what a checkpoint's prompts are)
TOKENIZER_COVERED = "tokenizer_files"


# a save's rank files; an import's (r1mega-convert) part files
STEP_FILE = re.compile(r"^(rank|part)\d{5}\.(json|safetensors)$")


def _digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(path: str) -> None:
    """manifest.json over the checkpoint files in `path` (call once they are all written)."""
    files = {e: _file_digest(os.path.join(path, e)) for e in _manifest_files(path)}
    tmp = os.path.join(path, MANIFEST + ".tmp")
    try:
        with open_fresh(tmp) as f:
            json.dump({"files": files, "digest": _digest(files), TOKENIZER_COVERED: True}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, MANIFEST))
    except OSError as e:
        raise CheckpointError(f"writing {os.path.join(path, MANIFEST)} failed ({e.strerror})") from None


def verify_manifest(path: str, meta: dict) -> None:
    """CheckpointError naming the first file that does not match the manifest written with it
    (edited, replaced, missing, or added afterwards). Checkpoints made before manifests (meta.json
    without 'manifest', e.g. by r1mega-convert before it wrote one) have none to check."""
    file = os.path.join(path, MANIFEST)
    if not os.path.exists(file):
        if meta.get("manifest"):
            raise CheckpointError(f"{file}: missing, though meta.json says the save wrote one")
        return
    try:
        with open(file) as f:
            manifest = json.load(f)
        files, digest = manifest["files"], manifest["digest"]
        assert isinstance(files, dict)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise CheckpointError(f"{file}: unreadable ({type(e).__name__}); the checkpoint cannot be verified") from None
    if _digest(files) != digest:
        raise CheckpointError(f"{file}: its digest does not match the files it lists (edited)")
    present = _manifest_files(path, tokenizer=bool(manifest.get(TOKENIZER_COVERED)))
    for name in sorted(set(files) | set(present)):
        where = os.path.join(path, name)
        if name not in files:
            raise CheckpointError(f"{where}: not part of the save ({MANIFEST} does not list it; copied in?)"
                                  + _tokenizer_advice(name, "remove it"))
        if name not in present:
            raise CheckpointError(f"{where}: missing ({MANIFEST} lists it)")
        try:
            digest = _file_digest(where)
        except OSError as e:  # a directory in its place, an I/O error: damage like any other, named
            raise CheckpointError(f"{where}: unreadable ({e.strerror})") from None
        if digest != files[name]:
            raise CheckpointError(f"{where}: differs from what was saved with this checkpoint ({MANIFEST}); "
                                  f"edited or copied from another checkpoint" + _tokenizer_advice(name, "restore it"))


def _tokenizer_advice(name: str, fix: str) -> str:
    """For a tokenizer file: the checkpoint stays refused while it differs, whatever tokenizer is
    passed, so say both steps; nothing for other files."""
    if name not in TOKENIZER_FILES:
        return ""
    return f"; {fix}, and to sample with another tokenizer pass it (--tokenizer, data.tokenizer)"


def _unused_name(base: str) -> str:
    n, path = 1, base
    while os.path.exists(path):
        n += 1
        path = f"{base}{n}"
    return path


def step_dirs(root: str) -> list[str]:
    """Published step directories under root, newest first."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), e) for e in os.listdir(root) if (m := STEP_DIR.match(e))
             and os.path.isdir(os.path.join(root, e))]
    return [os.path.join(root, e) for _, e in sorted(found, reverse=True)]


def read_meta(path: str) -> dict:
    """meta.json of a checkpoint directory, or a CheckpointError naming the file."""
    file = os.path.join(path, "meta.json")
    try:
        with open(file) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (not a complete checkpoint directory)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    step = meta.get("step", 0) if isinstance(meta, dict) else None
    if not _count(step):
        raise CheckpointError(f"{file}: expected an object with an integer 'step' >= 0")
    for key in ("optimizer_step", "consumed_samples", "skipped_steps"):  # what a resume computes with
        if key in meta and not _count(meta[key]):
            raise CheckpointError(f"{file}: '{key}' must be an integer >= 0, got {meta[key]!r}")
    for key in ("model_config", "layout", "hf_config"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"{file}: '{key}' must be an object, got {type(meta[key]).__name__}")
    return meta


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read_pointer(pointer: str) -> str:
    """The step directory `latest` names. It holds a bare step name inside its own directory;
    anything else (a path elsewhere, an empty or unreadable file) is a CheckpointError."""
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pointer}: unreadable ({e})") from None
    if not STEP_DIR.match(name):
        raise CheckpointError(f"{pointer} should name a step directory beside it (step_NNNNNNNN), "
                              f"but holds {name[:80]!r}")
    return os.path.join(os.path.dirname(pointer), name)


def latest_checkpoint(root: str) -> Optional[str]:
    """The step directory `latest` names (None for a fresh run). Refuses a run directory whose
    `latest` is gone while step directories exist, rather than start over and overwrite them."""
    pointer = os.path.join(root, "latest")
    if not os.path.exists(pointer):
        steps = step_dirs(root)
        if steps:
            names = ", ".join(os.path.basename(p) for p in steps[:3]) + (" ..." if len(steps) > 3 else "")
            raise CheckpointError(
                f"{pointer} is missing but {root} holds checkpoints ({names}); refusing to start over "
                f"and overwrite them. To resume, write the name of one into it "
                f"(echo {os.path.basename(steps[0])} > {pointer}); to start afresh, choose another train.run_dir")
        return None
    path = _read_pointer(pointer)
    if not os.path.exists(os.path.join(path, "meta.json")):
        raise CheckpointError(f"{pointer} names {path}, which has no meta.json")
    return path


def in_run(path: Optional[str], ckpt_root: str) -> bool:
    """Whether checkpoint `path` is one of this run's own (in its checkpoints root), not train.load."""
    return path is not None and os.path.abspath(os.path.dirname(os.path.normpath(path))) == os.path.abspath(ckpt_root)


def find_resume_checkpoint(root: str, load: Optional[str] = None, model_config: Optional[dict] = None,
                           allow_arch_change: Iterable[str] = ()) -> list[str]:
    """Checkpoints to resume from, best first: the run's own (`latest`'s target, then the older
    step directories, for fallback), else train.load. Empty for a fresh run. Reads only metadata:
    with `model_config`, the newest readable one's architecture is checked before any weight exists."""
    pointer = os.path.join(root, "latest")
    candidates: list[str] = []
    if os.path.isdir(pointer):  # saving could never replace it: say so before any work
        raise CheckpointError(f"{pointer} is a directory, but it must be the file naming the newest step "
                              f"directory; move it aside")
    if os.path.lexists(pointer):
        try:
            named = _read_pointer(pointer)
        except CheckpointError as e:  # the step directories themselves may be fine: fall back to them
            steps = step_dirs(root)
            if not steps:
                raise
            _warn(f"{pointer} is unusable ({e}); falling back to the step directories beside it, newest first")
            return _checked(steps, model_config, allow_arch_change)
        newest = _step_of(named)
        candidates = [named] + [p for p in step_dirs(root) if p != named and _step_of(p) < newest]
    elif latest_checkpoint(root) is None and load:  # (refuses when `latest` is gone but steps exist)
        check_load(load)
        candidates = [load]
    return _checked(candidates, model_config, allow_arch_change)


def check_load(load: str) -> None:
    """train.load names a checkpoint directory, or a CheckpointError says what it is instead."""
    if not os.path.isdir(load):
        raise CheckpointError(f"train.load={load}: no such checkpoint directory")
    what = not_a_checkpoint(load)
    if what:
        raise CheckpointError(f"train.load={load} {what}")


def checkpoint_meta(path: str) -> dict:
    """The meta.json of the checkpoint a run starts from (train.load), or a ConfigError naming
    train.load that says what the directory is instead."""
    if not os.path.isdir(path):
        raise ConfigError("train.load", f"{path}: no such checkpoint directory")
    if not os.path.exists(os.path.join(path, "meta.json")):
        raise ConfigError("train.load", f"{path} {not_a_checkpoint(path) or 'is not a checkpoint (no meta.json)'}")
    return read_meta(path)  # a damaged meta.json is a CheckpointError naming it


def not_a_checkpoint(path: str) -> Optional[str]:
    """What a directory without meta.json is instead, as advice (None when it is a checkpoint or
    nothing recognisable)."""
    if os.path.exists(os.path.join(path, "meta.json")):
        return None
    if os.path.exists(os.path.join(path, "config.json")):
        return (f"is a Hugging Face model directory; convert it first: r1mega-convert import --hf-dir {path} "
                f"--out CKPT, then train.load=CKPT")
    for root in (path, os.path.join(path, "checkpoints")):
        if os.path.exists(os.path.join(root, "latest")) or step_dirs(root):
            return (f"is a {'checkpoints' if root == path else 'run'} directory; give one of its checkpoints, "
                    f"e.g. train.load={os.path.join(root, 'step_NNNNNNNN')}")
    return None


def _checked(candidates: list[str], model_config: Optional[dict], allow_arch_change: Iterable[str]) -> list[str]:
    """With `model_config`, the newest readable candidate's architecture is checked (metadata only)."""
    if model_config is not None:
        for path in candidates:
            try:
                meta = read_meta(path)
            except CheckpointError:
                continue  # resume_from warns about it and falls back
            check_architecture(meta, model_config, allow_arch_change, path)
            break
    return candidates


def _step_of(path: str) -> int:
    m = STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else -1


def _same_setting(a, b) -> bool:
    """Equal, floats to float32 precision: a config.json often holds float32-rounded values
    (rms_norm_eps 9.999999747378752e-06 for 1e-05)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_setting(a[k], b[k]) for k in a)
    return a == b


def _rope_kind_once(value):
    """A rope scaling with its kind under one name: transformers 4 spells it `type` (DeepSeek's own
    config.json files), 5 `rope_type`, and an export of a model imported with one writes both; either
    way it is one setting (read as transformers reads it: rope_type first)."""
    if not isinstance(value, dict) or not {"type", "rope_type"} & value.keys():
        return value
    kind = value.get("rope_type", value.get("type"))
    return {**{k: v for k, v in value.items() if k not in ("type", "rope_type")}, "rope_type": kind}


def arch_differences(stored: dict, mine: dict, allowed: Iterable[str] = ()) -> list[str]:
    """'model.KEY: checkpoint A, config B' for each architecture key of two model configs (as dicts)
    that differs, floats to float32 precision."""
    allowed = set(allowed)
    return [f"model.{k}: checkpoint {stored[k]!r}, config {mine[k]!r}"
            for k in sorted(mine) if k in stored and k not in NON_ARCH_KEYS and k not in allowed
            and not _same_setting(_rope_kind_once(stored[k]) if k == "rope_scaling" else stored[k],
                                  _rope_kind_once(mine[k]) if k == "rope_scaling" else mine[k])]


def check_saved_model(path: str, model_config: dict, allowed: Iterable[str]) -> None:
    """check_architecture against the checkpoint at `path`, when its meta.json reads (one without a
    readable meta.json is left to the loaders: a damaged one of the run's own falls back)."""
    if not os.path.isfile(os.path.join(path, "meta.json")):
        return
    try:
        meta = read_meta(path)
    except CheckpointError:
        return
    check_architecture(meta, model_config, allowed, path)


def check_architecture(meta: dict, model_config: dict, allowed: Iterable[str], where: str) -> None:
    """Compare the model config a checkpoint was saved with to this run's; name every difference."""
    stored = meta.get("model_config")
    if not isinstance(stored, dict):
        return  # weights-only checkpoints of other families: shapes are still checked on load
    mine = json.loads(json.dumps(model_config))
    if "family" in stored and "family" in mine and stored["family"] != mine["family"]:
        # no allow_arch_change can carry weights across families: say so instead of offering it
        raise ArchitectureMismatch(
            f"{where} holds a {stored['family']} model, but the config builds a {mine['family']} model; drop the "
            f"config's model section (a model left at its family's defaults takes family and shapes from "
            f"train.load) or load a {mine['family']} checkpoint")
    diffs = arch_differences(stored, mine, allowed)
    if diffs:
        keys = ",".join(k.split(":")[0].split(".", 1)[1] for k in diffs)
        raise ArchitectureMismatch(
            f"{where} was saved with another model architecture:\n  " + "\n  ".join(diffs)
            + f"\nSet the model keys back to the checkpoint's values, or, if the change is deliberate, "
              f"pass train.allow_arch_change=[{keys}]")


def resume_from(candidates: list[str], chunks: torch.nn.ModuleList, optimizer: Optional[DistributedAdamW],
                ps: ParallelState, model_config: dict, allow_arch_change: Iterable[str] = (),
                verify: bool = True, also: Optional[Callable[[str, dict], None]] = None
                ) -> tuple[Optional[str], dict]:
    """Collective. Load the first candidate every rank reads cleanly; warn about each bad one
    (naming its file) and fall back to the next. Returns (path, meta), or (None, {}) for none.
    also(path, meta): what else a candidate must load (e.g. GRPO's reference copy); its
    CheckpointError makes the candidate bad too.
    A model-config mismatch is an error at once: an older checkpoint of the same run has it too."""
    if not candidates:
        return None, {}
    for path in candidates:
        meta, error = {}, None
        try:
            meta = read_meta(path)
            check_architecture(meta, model_config, allow_arch_change, path)
            load_checkpoint(path, chunks, optimizer, ps, verify=verify, meta=meta)
            if also is not None:
                also(path, meta)
        except ArchitectureMismatch:
            raise
        except CheckpointError as e:
            error = f"rank {ps.rank}: {e}" if ps.world > 1 else str(e)
        errors = _gather_errors(ps, error)
        if not errors:
            return path, meta
        if ps.rank == 0:
            _warn(f"checkpoint {path} is unusable ({'; '.join(errors)}); "
                  + ("falling back to the previous one" if path != candidates[-1] else "no older one left"))
    raise CheckpointError(f"no usable checkpoint among {', '.join(candidates)} (see the warnings above); "
                          f"repair or move them aside, or set train.load to a good one")


@torch.no_grad()
def load_checkpoint(path: str, chunks: torch.nn.ModuleList, optimizer: Optional[DistributedAdamW],
                    ps: ParallelState, verify: bool = True, meta: Optional[dict] = None,
                    kept_init: Optional[list[str]] = None) -> dict:
    """Load weights (and optimizer states, RNG) saved under any layout. Returns the meta dict.
    A checkpoint without optimizer states leaves the optimizer fresh, starting from the loaded weights.
    kept_init: a list given gets the local names of the tensors the checkpoint lacked (kept at init).
    Not collective: a CheckpointError here is this rank's (resume_from agrees on it across ranks)."""
    meta = read_meta(path) if meta is None else meta
    model_reader = PieceReader(path, "model", verify)
    for chunk in chunks:
        report = load_weights(chunk, model_reader)
        if kept_init is not None:
            kept_init += report.kept_init
    if optimizer is not None:
        # fp32 master weights come from "model/" (dequantised exactly where the checkpoint holds
        # FP8 blocks), never from the possibly bf16 parameters. A converted checkpoint has no
        # optimizer states: fresh moments, and tensors it lacks (an MTP module) keep their init.
        has_states = "optimizer_step" in meta
        readers = {"master": model_reader}
        if has_states:
            readers.update({k: PieceReader(path, k, verify) for k in STATES})
        states: dict[str, dict[str, torch.Tensor]] = {}
        for c, chunk in enumerate(chunks):
            for spec in chunk.param_slices():
                if not spec.param.requires_grad:
                    continue
                entry = states.setdefault(f"{c}.{spec.local_name}",
                                          {k: torch.zeros(spec.param.shape) for k in ("master", *STATES)})
                key = spec.key
                if spec.fallback is not None and any(key not in r for r in readers.values()):
                    key = spec.fallback
                for k, reader in readers.items():
                    if has_states and k in STATES and key not in reader and key in model_reader:
                        continue  # frozen when saved (e.g. DeepSeek-V3.2's dense warm-up): fresh moments
                    if not has_states and key not in reader:
                        t = spec.local.detach().float().cpu()
                    else:
                        t = reader.read(key, spec.full_shape, spec.dim, spec.rank, spec.parts)
                    (entry[k] if spec.index is None else entry[k][spec.index]).copy_(t)
        optimizer.load_full_states(states, meta["optimizer_step"] if has_states else 0)
        optimizer.skipped = meta.get("skipped_steps", 0)
    rng_file = os.path.join(path, "rng.pt")
    if os.path.exists(rng_file):  # absent in checkpoints made by r1mega-convert
        try:
            torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
        except Exception as e:  # any unpickling failure means the file is damaged
            raise CheckpointError(f"{rng_file}: unreadable ({type(e).__name__}: {e})") from None
    # last: each file's own checks above name a damage more precisely. Also without `verify`: the
    # manifest hashes no tensor bytes (meta.json, rng.pt, listings, headers), and an edited meta.json
    # would otherwise resume at the edited step or data position
    verify_manifest(path, meta)
    return meta
