"""Tokenizers: Hugging Face `tokenizer.json` (DeepSeek's own) or a sentencepiece model (small runs)."""
from __future__ import annotations

import os
import re

# DeepSeek-R1's chat markers; a sentencepiece model for small runs is trained with them as symbols
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
CHAT_SYMBOLS = [BOS, EOS, USER, ASSISTANT, "<think>", "</think>"]


class Tokenizer:
    def __init__(self, path: str):
        self.path = path
        if path.endswith(".model"):
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=path)
            self._hf = None
            self.vocab_size = self._sp.get_piece_size()
        else:
            from tokenizers import Tokenizer as HFTokenizer

            file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
            if not os.path.exists(file):
                raise FileNotFoundError(f"tokenizer: {file} not found (expected tokenizer.json or a .model file)")
            self._hf = HFTokenizer.from_file(file)
            self._sp = None
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self.eos_id = self.token_id(EOS)
        self.bos_id = self.token_id(BOS)

    def token_id(self, token: str):
        if self._sp is not None:
            i = self._sp.piece_to_id(token)
            return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i
        return self._hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._sp is not None:
            return self._sp.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=False)


def train_sentencepiece(texts, prefix: str, vocab_size: int) -> str:
    """Train a small BPE sentencepiece model with the chat markers as atomic symbols."""
    import sentencepiece as spm

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    texts = list(texts)
    # train under a temporary name beside the target, then rename: an existing tokenizer is
    # replaced only by a complete one, never left half-written by a crash or a refusal
    tmp = os.path.join(os.path.dirname(os.path.abspath(prefix)), f".{os.path.basename(prefix)}.tmp-{os.getpid()}")
    try:
        try:
            _train_spm(spm, texts, tmp, vocab_size)
        except RuntimeError as e:
            # BPE needs an exact size; a small corpus supports fewer pieces - take what it supports
            found = re.search(r"value <= (\d+)", str(e))
            if not found:
                raise
            _train_spm(spm, texts, tmp, int(found.group(1)))
        for ext in (".vocab", ".model"):  # .model last: its presence means the pair is complete
            os.replace(tmp + ext, prefix + ext)
    finally:
        for ext in (".model", ".vocab"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)  # this call's own temporary files
    return prefix + ".model"


def _train_spm(spm, texts: list[str], prefix: str, vocab_size: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
        user_defined_symbols=CHAT_SYMBOLS, byte_fallback=True, character_coverage=1.0,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", minloglevel=2, num_threads=1,
    )


def load_tokenizer(path: str, what: str = "data.tokenizer") -> Tokenizer:
    """Tokenizer(path), with a missing, corrupt or foreign file reported as a DataError naming it."""
    from r1mega.errors import DataError, R1MegaError

    try:
        return Tokenizer(path)
    except R1MegaError:
        raise
    except Exception as e:  # tokenizers/sentencepiece raise bare Exception/RuntimeError on bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{what} {path}: cannot load a tokenizer ({msg}); expected a tokenizer.json, a "
                        f"directory holding one, or a sentencepiece .model file") from None
