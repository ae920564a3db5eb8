"""The data a run reads, from its `data:` section: the training dataset and the tokenizer, and a
synthetic corpus built first when the config asks for one.

Builds (once, on rank 0, under data.cache_dir) a corpus ("arithmetic": worked sums and
differences; "addition": the R1-Zero demo's biased single-digit sums; "sum3": the pipeline's
sums of three digits worked in a <think> thought, its last step biased), a sentencepiece
tokenizer trained on it, the pretraining indexed dataset and the SFT chat JSONL - the same files
`tools/train_tokenizer.py` and `tools/preprocess_data.py` produce from user data.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import replace
from typing import Optional

import torch.distributed as dist

from r1mega.config import ConfigError, DataConfig
from r1mega.data import synthetic
from r1mega.data.pretrain import PretrainData, write_indexed
from r1mega.data.tokenizer import EOS, Tokenizer, check_fits, load_tokenizer, train_sentencepiece

SYNTHETIC = ("arithmetic", "addition", "sum3")


def _build(kind: str, root: str, docs: int, vocab_size: int) -> None:
    os.makedirs(root, exist_ok=True)
    corpus = {"arithmetic": synthetic.pretrain_corpus, "addition": synthetic.biased_addition_corpus,
              "sum3": synthetic.biased_sum3_corpus}[kind](docs, seed=0)
    chats = synthetic.sft_records(max(docs // 2, 64), seed=1)
    texts = corpus + [m["content"] for c in chats for m in c["messages"]]
    tok = Tokenizer(train_sentencepiece(texts, os.path.join(root, "tokenizer"), vocab_size))
    write_indexed(os.path.join(root, "pretrain"), (tok.encode(d + EOS) for d in corpus), tok.vocab_size)
    tmp = os.path.join(root, "sft.jsonl.tmp")
    with open(tmp, "w") as f:
        for c in chats:
            f.write(json.dumps(c) + "\n")
    os.replace(tmp, os.path.join(root, "sft.jsonl"))
    open(os.path.join(root, "DONE"), "w").close()


def _build_once(kind: str, root: str, docs: int, vocab_size: int) -> None:
    """Build the corpus unless another run sharing data.cache_dir already has: runs on other run
    directories may start together, and two builders would rename files under each other."""
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the OS if this process dies
        if not os.path.exists(os.path.join(root, "DONE")):  # the run that held the lock may have built it
            _build(kind, root, docs, vocab_size)


def resolve_data(cfg: DataConfig, kind: str, vocab_size: int) -> DataConfig:
    """Fill paths/tokenizer for a synthetic corpus (built if missing). Collective when distributed."""
    if cfg.synthetic is None:
        return cfg
    if cfg.synthetic not in SYNTHETIC:
        raise ConfigError("data.synthetic", f"unknown corpus {cfg.synthetic!r} ({', '.join(SYNTHETIC)})")
    root = os.path.join(cfg.cache_dir, f"{cfg.synthetic}-{cfg.synthetic_docs}-v{vocab_size}")
    first = not dist.is_initialized() or dist.get_rank() == 0
    if os.path.exists(cfg.cache_dir) and not os.path.isdir(cfg.cache_dir):
        raise ConfigError("data.cache_dir", f"{cfg.cache_dir} exists and is not a directory")
    if first and not os.path.exists(os.path.join(root, "DONE")):
        try:
            _build_once(cfg.synthetic, root, cfg.synthetic_docs, vocab_size)
        except OSError as e:
            raise ConfigError("data.cache_dir", f"cannot build the synthetic corpus in {root} ({e.strerror}: "
                              f"{e.filename})") from None
        except RuntimeError as e:  # sentencepiece refuses a vocabulary too small for the corpus
            if "vocab" not in str(e).lower():
                raise
            raise ConfigError("model.vocab_size", f"{vocab_size} is too small for the synthetic {cfg.synthetic} "
                              f"corpus's tokenizer ({str(e).splitlines()[0][-120:]})") from None
    if dist.is_initialized():
        dist.barrier()
    paths = [os.path.join(root, "pretrain")] if kind == "pretrain" else [os.path.join(root, "sft.jsonl")]
    return replace(cfg, paths=paths, tokenizer=os.path.join(root, "tokenizer.model"))


def training_data(cfg: DataConfig, kind: str, vocab_size: int, seed: int, load: Optional[str] = None):
    """(the dataset of a pretrain or SFT run ("pretrain" | "sft"), whose `batch(first, size)` gives a
    global batch as the model's inputs; the path of its tokenizer, None when there is none), resolved
    once. The tokenizer: data.tokenizer, the synthetic corpus's, else the one in `load`, the checkpoint
    the run starts from (r1mega-convert import and every checkpoint keep its files)."""
    from r1mega.data.sft import SFTData

    d = resolve_data(cfg, kind, vocab_size)
    if d.tokenizer is None and load and os.path.exists(os.path.join(load, "tokenizer.json")):
        d = replace(d, tokenizer=load)
    if kind == "sft" and (len(d.paths) > 1 or d.weights is not None):
        raise ConfigError("data.paths", f"SFT reads one chat JSONL file, got {len(d.paths)} paths"
                          + (" and data.weights" if d.weights is not None else "") + "; concatenate the files")
    if d.tokenizer is None and kind == "sft":
        raise ConfigError("data.tokenizer", "SFT renders chat records and needs a tokenizer")
    if d.tokenizer is not None:
        if not os.path.exists(d.tokenizer):
            raise ConfigError("data.tokenizer", f"{d.tokenizer}: not found")
        tok = load_tokenizer(d.tokenizer)
        check_fits(tok, vocab_size)
    if kind == "pretrain":
        return PretrainData(d.paths, d.weights, d.seq_length, seed, vocab_size), d.tokenizer
    return SFTData(d.paths[0], tok, d.seq_length, seed, d.sft_template), d.tokenizer


def prompt_tokenizer(cfg: DataConfig, vocab_size: int, load: Optional[str]) -> Tokenizer:
    """The tokenizer of an RL run's prompts: data.tokenizer, the synthetic corpus's, else the one in
    `load` (the checkpoint of a run on prompt files; None for a synthetic run)."""
    d = resolve_data(cfg, "pretrain", vocab_size)  # builds the synthetic corpus if asked
    path = d.tokenizer or load
    if path is None:
        raise ConfigError("data.tokenizer", "GRPO needs a tokenizer: data.tokenizer=DIR or data.synthetic")
    tok = Tokenizer(path)
    if load is not None and path != load:  # the model's own EOS ids end rollouts too (transformers' generate)
        try:
            tok.add_model_eos(load)
        except ValueError as e:
            raise ConfigError("train.load", str(e)) from None
    check_fits(tok, vocab_size)
    return tok
