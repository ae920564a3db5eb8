"""Pretraining samples from Megatron indexed datasets (`.bin`/`.idx`), blended by weight.

Files are read and written through megatron-core's IndexedDataset, so corpora preprocessed for
Megatron-LM load unchanged. Each dataset is one token stream (documents back to back, each
ending in EOS); sample j is the window [j*s, j*s + s + 1) of a per-epoch shuffled window order.
Blending follows Megatron's rule: sample i goes to the dataset furthest below its weight share.
Everything is a pure function of (seed, sample index), so the data position in a checkpoint is
one integer and resuming under another layout sees the same batches.
"""
from __future__ import annotations

import os
import struct
import uuid
import warnings
from typing import Iterable, Optional

import numpy as np
import torch

from r1mega.errors import DataError

# corpora up to this size have every token id checked when opened; larger ones per sample as read
EAGER_SCAN_TOKENS = 1 << 27

def _indexed():
    # megatron.core costs seconds to import; only pay it when indexed data is used. Its import
    # warns that Transformer Engine / apex are absent, which does not concern the dataset code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    return IndexedDataset, IndexedDatasetBuilder


def write_indexed(prefix: str, documents: Iterable[list[int]], vocab_size: int) -> int:
    """Write token documents as `<prefix>.bin/.idx`. Returns the number of tokens written.

    Both files are written under temporary names beside the targets and renamed into place only
    when complete, so a failure part-way (a bad input line, a full disk) leaves existing outputs
    as they were."""
    _, Builder = _indexed()
    dtype = np.uint16 if vocab_size < 65500 else np.int32
    folder = os.path.dirname(os.path.abspath(prefix))
    tag = f".{os.path.basename(prefix)}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp_bin, tmp_idx = os.path.join(folder, tag + ".bin.tmp"), os.path.join(folder, tag + ".idx.tmp")
    total = 0
    try:
        builder = Builder(tmp_bin, dtype=dtype)
        try:
            with warnings.catch_warnings():  # numpy 2 deprecation inside megatron-core's builder
                warnings.simplefilter("ignore", DeprecationWarning)
                for doc in documents:
                    builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
                    total += len(doc)
            builder.finalize(tmp_idx)
        finally:
            builder.data_file.close()
        for tmp in (tmp_bin, tmp_idx):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        # .bin first: a reader pairs a new .bin only with the .idx renamed right after it
        os.replace(tmp_bin, prefix + ".bin")
        os.replace(tmp_idx, prefix + ".idx")
    finally:
        for tmp in (tmp_bin, tmp_idx):  # ours alone; gone already after a success
            if os.path.exists(tmp):
                os.remove(tmp)
    return total


_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = 34  # magic 9 + version 8 + dtype code 1 + sequence count 8 + document count 8


def check_index_files(prefix: str) -> None:
    """Sizes of `<prefix>.idx` and `.bin` against what the index header promises, before any read."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    for path in (idx, bin_):
        if not os.path.exists(path):
            hint = (f"; give the prefix {prefix[:-4]} without the extension" if prefix.endswith((".bin", ".idx"))
                    else "")
            raise DataError(f"{path}: not found (data.paths takes prefixes of <prefix>.bin/.idx pairs, "
                            f"made by tools/preprocess_data.py){hint}")
    size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        head = f.read(_HEADER)
    if len(head) < _HEADER or head[:9] != _INDEX_MAGIC:
        raise DataError(f"{idx}: not a Megatron index file (bad or truncated header, {size} bytes)")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise DataError(f"{idx}: unsupported index version {version}")
    want = _HEADER + n_seq * (4 + 8) + n_doc * 8
    if size < want:
        raise DataError(f"{idx}: truncated: {size} bytes, but its header promises {n_seq} sequences "
                        f"({want} bytes); rebuild it with tools/preprocess_data.py")
    item = np.dtype(_DTYPES.get(code, np.uint8)).itemsize
    if code not in _DTYPES:
        raise DataError(f"{idx}: unknown token dtype code {code}")
    if n_seq:
        lengths = np.fromfile(idx, dtype=np.int32, count=n_seq, offset=_HEADER)
        pointers = np.fromfile(idx, dtype=np.int64, count=n_seq, offset=_HEADER + 4 * n_seq)
        need = int(pointers[-1]) + int(lengths[-1]) * item
        have = os.path.getsize(bin_)
        if have < need:
            raise DataError(f"{bin_}: truncated: {have} bytes, but {idx} indexes {need}; "
                            f"rebuild both with tools/preprocess_data.py")


# megatron-core's DType codes
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
           8: np.uint16}


class TokenStream:
    """One indexed dataset as a flat token stream with window access."""

    def __init__(self, prefix: str, vocab_size: Optional[int] = None):
        check_index_files(prefix)
        IndexedDataset, _ = _indexed()
        self.prefix, self.vocab_size = prefix, vocab_size
        self.ds = IndexedDataset(prefix)
        lengths = np.asarray(self.ds.sequence_lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.num_tokens = int(self.starts[-1])
        if vocab_size is not None and self.num_tokens <= EAGER_SCAN_TOKENS:
            self._check_ids(0, self.window(0, self.num_tokens, check=False))

    def _check_ids(self, start: int, tokens: np.ndarray) -> None:
        bad = np.flatnonzero((tokens < 0) | (tokens >= self.vocab_size))
        if bad.size:
            pos = start + int(bad[0])
            doc = int(np.searchsorted(self.starts, pos, side="right") - 1)
            raise DataError(f"{self.prefix}.bin: token id {int(tokens[bad[0]])} at token {pos} (document {doc}) "
                            f"is outside model.vocab_size {self.vocab_size}; was it tokenized with another "
                            f"tokenizer?")

    def window(self, start: int, length: int, check: bool = True) -> np.ndarray:
        out, pos, end = [], start, start + length
        doc = int(np.searchsorted(self.starts, pos, side="right") - 1)
        while pos < end:
            offset = pos - self.starts[doc]
            take = min(end - pos, int(self.starts[doc + 1] - pos))
            out.append(np.asarray(self.ds.get(doc, offset=int(offset), length=int(take)), dtype=np.int64))
            pos += take
            doc += 1
        tokens = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        if check and self.vocab_size is not None:
            self._check_ids(start, tokens)
        return tokens


class PretrainData:
    def __init__(self, prefixes: list[str], weights: Optional[list[float]], seq_length: int, seed: int,
                 vocab_size: Optional[int] = None):
        if weights is not None and len(weights) != len(prefixes):
            raise DataError(f"data.weights has {len(weights)} entries for {len(prefixes)} data.paths")
        self.streams = [TokenStream(p, vocab_size) for p in prefixes]
        w = np.asarray(weights if weights is not None else [1.0] * len(prefixes), dtype=np.float64)
        self.weights = w / w.sum()
        self.seq_length, self.seed = seq_length, seed
        self.windows = []
        for s in self.streams:
            n = (s.num_tokens - 1) // seq_length
            if n < 1:
                raise DataError(f"{s.prefix}: {s.num_tokens} tokens cannot fill one sample of data.seq_length + 1 = "
                                f"{seq_length + 1} tokens")
            self.windows.append(n)
        self._choice: list[tuple[int, int]] = []  # sample i -> (dataset, its j-th sample)
        self._counts = np.zeros(len(self.streams), dtype=np.int64)

    def _assign(self, upto: int) -> None:
        while len(self._choice) <= upto:
            i = len(self._choice)
            d = int(np.argmax(self.weights * (i + 1) - self._counts))
            self._choice.append((d, int(self._counts[d])))
            self._counts[d] += 1

    def _window_index(self, d: int, j: int) -> int:
        epoch, k = divmod(j, self.windows[d])
        perm = np.random.default_rng([self.seed, d, epoch]).permutation(self.windows[d])
        return int(perm[k])

    def fingerprints(self) -> list[dict]:
        """Per data.paths prefix, a digest of its .idx and .bin (sizes, headers, sampled content;
        r1mega/file_digest.py): what a checkpoint's data position refers to."""
        from r1mega.file_digest import sampled_digest

        try:
            return [{"prefix": s.prefix, "idx": sampled_digest(s.prefix + ".idx"), "bin": sampled_digest(s.prefix + ".bin")}
                    for s in self.streams]
        except OSError as e:
            raise DataError(f"{e.filename}: cannot read ({e.strerror})") from None

    def sample(self, i: int) -> np.ndarray:
        self._assign(i)
        d, j = self._choice[i]
        w = self._window_index(d, j)
        return self.streams[d].window(w * self.seq_length, self.seq_length + 1)

    def batch(self, first_sample: int, size: int) -> dict:
        """Global batch of samples [first, first+size): input ids and next-token labels [size, s]."""
        tokens = torch.from_numpy(np.stack([self.sample(first_sample + k) for k in range(size)]))
        return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
