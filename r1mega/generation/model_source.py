"""Load a model for generation under any TP/PP/EP/DP layout, from either source r1mega uses:

  an r1mega checkpoint   a step directory (has meta.json), a checkpoints root (has `latest`) or a
                         run directory; shapes from --config when it gives them, else the checkpoint's saved model config
  a Hugging Face dir     config.json + safetensors (DeepSeek-V3/R1/V2, or a Qwen2/Llama student);
                         its tokenizer.json too

Each rank builds only its shards and reads only its slices (`load_checkpoint` / `load_hf_weights`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from r1mega.config import Config, ConfigError, ParallelConfig, load_config, validate
from r1mega.models.family import at_family_defaults, family_for_hf, model_of_checkpoint
from r1mega.parallel.layout import ParallelState, build_parallel_state, default_device, single_process_state


@dataclass
class LoadedModel:
    chunks: torch.nn.ModuleList  # this rank's pipeline stage (one chunk)
    ps: ParallelState
    cfg: Config
    tokenizer: str  # path
    source: str  # what was loaded (a step directory or an HF dir)
    dtype: str = "float32"  # what it computes in (bfloat16 draws other samples than float32)
    kept_init: tuple[str, ...] = ()  # tensors the checkpoint lacks, at the seeded init (e.g. an MTP layer)


def _with_model(cfg: Config, model_cfg) -> Config:
    """The run config with `model_cfg` (of any family) as its active model."""
    cfg.model, cfg.student = model_cfg, None
    return cfg


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.endswith(".safetensors") for f in os.listdir(path))


def weights_digest(source: str, legacy: bool = False) -> str:
    """What identifies the weights in `source` (a step directory or an HF directory) beyond its path,
    cheaply: every JSON file's bytes (a checkpoint's meta.json and piece listings carry the tensors'
    CRC32s), each safetensors file's size and header, and, where no listing beside it vouches for
    its tensor bytes (an HF directory), sampled content (r1mega/file_digest.py: each tensor's ends
    and chunks spread over the file). A model retrained or re-exported at the same path gets another
    digest, so samples drawn from the old one are not resumed as if of the new; a `touch` or a copy
    keeps it. legacy: the digest of output directories made before, which took an unlisted
    safetensors file's modification time instead of its content."""
    import hashlib
    import json
    import struct

    from r1mega.file_digest import safetensors_digest

    names = set(os.listdir(source))
    listed_any = any(n.startswith("rank") and n.endswith(".json") for n in names)
    parts = {}
    for name in sorted(names):
        path = os.path.join(source, name)
        if not os.path.isfile(path) or not name.endswith((".json", ".safetensors")) or name == "manifest.json":
            continue
        # a checkpoint's listing beside it carries its tensors' CRC32s (and is hashed whole)
        listed = listed_any if legacy else name[:-len(".safetensors")] + ".json" in names
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                if name.endswith(".safetensors") and not (listed or legacy):
                    h.update(safetensors_digest(path).encode())
                elif name.endswith(".safetensors"):
                    st = os.fstat(f.fileno())
                    head = f.read(8)
                    n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                    h.update(f"{st.st_size} {'' if listed else st.st_mtime_ns}".encode() + head
                             + f.read(min(n, 100_000_000)))
                else:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
        except OSError as e:
            raise ConfigError("--model", f"{path}: cannot read ({e.strerror})") from None
        parts[name] = h.hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def store_weights_digest(source: str, out: str) -> str:
    """weights_digest(source) as the output directory `out` records it: a directory made before
    content digests keeps its time-based one while the weights (and their times) are unchanged."""
    import json

    new = weights_digest(source)
    try:
        with open(os.path.join(out, "meta.json"), encoding="utf-8") as f:
            old = json.load(f).get("weights")
    except (OSError, ValueError, AttributeError):
        return new  # none yet, or the store names what is wrong with it
    return old if old not in (None, new) and old == weights_digest(source, legacy=True) else new


def resolve_checkpoint(path: str) -> str:
    """A step directory from a step directory, a checkpoints root or a run directory."""
    from r1mega.train.checkpoint import latest_checkpoint

    for root in (path, os.path.join(path, "checkpoints")):
        if os.path.isfile(os.path.join(root, "meta.json")):
            return root
        if os.path.isfile(os.path.join(root, "latest")):
            return latest_checkpoint(root)
    raise ConfigError("--model", f"{path}: neither an r1mega checkpoint (meta.json or latest) "
                      f"nor a Hugging Face directory (config.json + *.safetensors)")


def load_model(model: str, parallel: ParallelConfig, world: int, distributed: bool,
               config: Optional[str] = None, overrides: Optional[list[str]] = None,
               tokenizer: Optional[str] = None, dtype: str = "float32") -> LoadedModel:
    """Collective when distributed: builds the layout's groups, then this rank's weights."""
    from r1mega.data.synthetic import resolve_tokenizer
    from r1mega.train.setup import build_chunks, init_weights, place

    if not os.path.exists(model):
        raise ConfigError("--model", f"{model}: no such file or directory")
    cfg = load_config(config, overrides)
    cfg.parallel = parallel
    cfg.train.virtual_stages = 1
    hf = is_hf_dir(model)
    source = os.path.abspath(model if hf else resolve_checkpoint(model))
    if hf:
        _, model_cfg = family_for_hf(model)
        cfg = _with_model(cfg, model_cfg)
    elif config is None or at_family_defaults(cfg.active_model):  # shapes from the checkpoint, unless --config gives them
        from r1mega.train.checkpoint import read_meta

        meta = read_meta(source)  # unreadable or malformed: a CheckpointError naming the file
        if not meta.get("model_config") and meta.get("hf_config") is None:
            raise ConfigError("--config", f"{source} does not record its model shapes; pass the YAML it was trained with")
        cfg = _with_model(cfg, model_of_checkpoint(meta, cfg.active_model, source, cfg.model_section)[1])
    else:  # the --config's own model: refused by key, before it is built, if the checkpoint holds another
        from r1mega.models.family import family_of_config
        from r1mega.train.checkpoint import check_saved_model

        check_saved_model(source, family_of_config(cfg.active_model).architecture(cfg.active_model),
                          cfg.train.allow_arch_change)
    cfg = validate(cfg, world)
    ps = build_parallel_state(cfg.parallel) if distributed else single_process_state()
    if tokenizer is None:
        if hf and os.path.isfile(os.path.join(model, "tokenizer.json")):
            tokenizer = model
        else:
            tokenizer = resolve_tokenizer(cfg.data, cfg.active_model.vocab_size)
        if tokenizer is None and os.path.isfile(os.path.join(source, "tokenizer.json")):
            tokenizer = source  # the tokenizer r1mega-convert import copied beside the weights
    if tokenizer is None:
        if not hf:  # a tokenizer file removed from beside the weights is named, not taken for none saved
            from r1mega.train.checkpoint import read_meta, verify_manifest

            verify_manifest(source, read_meta(source))
        raise ConfigError("--tokenizer", "no tokenizer: pass --tokenizer, or a --config with data.tokenizer")
    chunks = build_chunks(cfg, ps)
    place(chunks, default_device(), getattr(torch, dtype))
    kept: list[str] = []  # tensors the checkpoint lacks (transformers saves DeepSeek without its MTP layer)
    if hf:
        from r1mega.models.weights import load_hf_weights

        kept = load_hf_weights(chunks[0], model).kept_init
    else:
        from r1mega.train.checkpoint import load_checkpoint

        load_checkpoint(source, chunks, None, ps, kept_init=kept)
    if kept:  # seeded and layout-independent as training's init (not the process's RNG): the same
        # speculative draft, so the same samples, in every process, layout and resumed run
        init_weights(chunks, cfg.seed, only=set(kept))
    chunks.eval()
    return LoadedModel(chunks, ps, cfg, tokenizer, source, dtype, tuple(kept))
