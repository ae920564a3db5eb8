"""Make the data a run needs when the config asks for a synthetic corpus.

Builds (once, on rank 0, under data.cache_dir) a corpus ("arithmetic": worked sums and
differences; "addition": the R1-Zero demo's biased single-digit sums; "sum3": the pipeline's
sums of three digits worked in a <think> thought, its last step biased), a sentencepiece
tokenizer trained on it, the pretraining indexed dataset and the SFT chat JSONL - the same files
`tools/train_tokenizer.py` and `tools/preprocess_data.py` produce from user data.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import torch.distributed as dist

from r1mega.config import ConfigError, DataConfig
from r1mega.data import synthetic
from r1mega.data.pretrain import write_indexed
from r1mega.data.tokenizer import EOS, Tokenizer, train_sentencepiece

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
            _build(cfg.synthetic, root, cfg.synthetic_docs, vocab_size)
        except RuntimeError as e:  # sentencepiece refuses a vocabulary too small for the corpus
            if "vocab" not in str(e).lower():
                raise
            raise ConfigError("model.vocab_size", f"{vocab_size} is too small for the synthetic {cfg.synthetic} "
                              f"corpus's tokenizer ({str(e).splitlines()[0][-120:]})") from None
    if dist.is_initialized():
        dist.barrier()
    paths = [os.path.join(root, "pretrain")] if kind == "pretrain" else [os.path.join(root, "sft.jsonl")]
    return replace(cfg, paths=paths, tokenizer=os.path.join(root, "tokenizer.model"))
